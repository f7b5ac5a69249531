"""The operators every admin page and action is tried as (test_admin_linking.py,
test_admin_permissions.py): a superuser, staff with view only, staff with change only, staff
with view and ``nomos_billing.link_customer``, staff without any of our permissions, and a
non-staff user holding view and link permissions (which must not matter without staff)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Permission
from django.test import Client

MODELS = ["nomoscustomer", "nomossubscription", "nomoslead", "webhookevent", "nomoslinkclaim"]

#: Role -> (is_staff, is_superuser, permission codenames).
ROLES: dict[str, tuple[bool, bool, list[str]]] = {
    "superuser": (True, True, []),
    "staff-view": (True, False, [f"view_{m}" for m in MODELS]),
    "staff-change": (True, False, [f"change_{m}" for m in MODELS]),
    "staff-link": (True, False, [*(f"view_{m}" for m in MODELS), "link_customer"]),
    "staff-none": (True, False, []),
    "not-staff": (False, False, [*(f"view_{m}" for m in MODELS), "link_customer"]),
}


def operator_client(
    django_user_model: Any, name: str, roles: dict[str, tuple[bool, bool, list[str]]] = ROLES
) -> tuple[Client, Any]:
    staff, superuser, codenames = roles[name]
    operator = django_user_model.objects.create_user(
        f"op-{name}", f"{name}@example.com", "pw", is_staff=staff, is_superuser=superuser
    )
    operator.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label__in=["nomos_billing", "auth"], codename__in=codenames
        )
    )
    client = Client()
    client.force_login(operator)
    return client, operator


def refused(name: str, response: Any) -> None:
    """Not staff: the admin's login page; staff: 403."""
    if name == "not-staff":
        assert response.status_code == 302 and "/login/" in response["Location"], name
    else:
        assert response.status_code == 403, (name, response.status_code)
