"""Guard: an inactive account is never linked to a Nomos customer, on every path that links.

Each resolver (``by_lead``, ``by_metadata``, ``by_email``) is tried alone on every path that
runs it: a webhook delivery, ``nomos_sync``, and (for leads) the portal click that asks Nomos
about a recent checkout. Then the paths that link without a resolver: the customer's mailbox
confirming a held link, an operator confirming one, and the admin's "Link to a user" form.
Each row runs twice, the account active (linked) and the same account deactivated (nobody
linked), so a row passes only while the check stands where that path goes through.
"""

from __future__ import annotations

from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from nomos_billing.linking import user_reference
from nomos_billing.models import NomosCustomer, NomosLead, NomosLinkClaim
from nomos_billing.sandbox import seed
from nomos_billing.testing import post_event

pytestmark = pytest.mark.django_db

PLAN = "pln_sandbox_home"
RESOLVERS = {
    "by_lead": "nomos_billing.linking.by_lead",
    "by_metadata": "nomos_billing.linking.by_metadata",
    "by_email": "nomos_billing.linking.by_email",
}
#: Lets a deactivated account keep its session, as some sites do: the resolvers' own check is
#: then all that stands between it and a link on the portal path.
ALLOW_INACTIVE = ["django.contrib.auth.backends.AllowAllUsersModelBackend"]


def only(settings: Any, rule: str, **extra: Any) -> None:
    settings.NOMOS_BILLING = {
        **settings.NOMOS_BILLING,
        "USER_RESOLVERS": [RESOLVERS[rule]],
        "PLAN_ID": PLAN,
        **extra,
    }


def deactivate(user: Any) -> None:
    user.is_active = False
    user.save(update_fields=["is_active"])


def alice_customer() -> NomosCustomer | None:
    return NomosCustomer.objects.filter(customer_id=seed.ALICE).first()


def sync() -> None:
    call_command("nomos_sync", stdout=StringIO(), stderr=StringIO())


def by_webhook(nomos: Any, subscription_id: str) -> None:
    event = nomos.build_event("subscription.created", {"subscription": subscription_id})
    assert post_event(Client(), event).status_code == 200


def lead_checkout(nomos: Any, user: Any) -> str:
    """``user`` sends the lead form (a real POST /leads) and finishes the sandbox checkout;
    returns the customer id. The subscription carries no metadata, only its lead."""
    client = Client()
    client.force_login(user)
    response = client.post("/nomos/portal/start/", {"zip_code": "10115", "estimated_usage": "2500"})
    assert response.status_code == 303
    subscription = nomos.convert_lead(NomosLead.objects.get(user=user).lead_id)
    nomos.customers[subscription["customer"]["id"]]["email"] = user.email
    return str(subscription["customer"]["id"])


def signed_metadata(nomos: Any, user: Any) -> str:
    nomos.subscriptions[seed.ALICE_SUBSCRIPTION]["metadata"] = {
        "django_user_id": user_reference(user)
    }
    return seed.ALICE


# -- the resolvers, on each path that runs them ----------------------------------------------


def lead_by_webhook(nomos: Any, user: Any, settings: Any, ready: Callable[[], None]) -> str:
    customer_id = lead_checkout(nomos, user)
    ready()
    sub = next(s for s in nomos.subscriptions.values() if s["customer"] == customer_id)
    by_webhook(nomos, sub["id"])
    return customer_id


def lead_by_sync(nomos: Any, user: Any, settings: Any, ready: Callable[[], None]) -> str:
    customer_id = lead_checkout(nomos, user)
    ready()
    sync()
    return customer_id


def lead_by_portal_click(nomos: Any, user: Any, settings: Any, ready: Callable[[], None]) -> str:
    settings.AUTHENTICATION_BACKENDS = ALLOW_INACTIVE
    customer_id = lead_checkout(nomos, user)
    ready()
    client = Client()
    client.force_login(user)
    client.get("/nomos/portal/")
    return customer_id


def metadata_by_webhook(nomos: Any, user: Any, settings: Any, ready: Callable[[], None]) -> str:
    customer_id = signed_metadata(nomos, user)
    ready()
    by_webhook(nomos, seed.ALICE_SUBSCRIPTION)
    return customer_id


def metadata_by_sync(nomos: Any, user: Any, settings: Any, ready: Callable[[], None]) -> str:
    customer_id = signed_metadata(nomos, user)
    ready()
    sync()
    return customer_id


def email_by_webhook(nomos: Any, user: Any, settings: Any, ready: Callable[[], None]) -> str:
    ready()
    by_webhook(nomos, seed.ALICE_SUBSCRIPTION)
    return seed.ALICE


def email_by_sync(nomos: Any, user: Any, settings: Any, ready: Callable[[], None]) -> str:
    ready()
    sync()
    return seed.ALICE


PATHS: dict[str, tuple[str, Callable[..., str]]] = {
    "by_lead, webhook": ("by_lead", lead_by_webhook),
    "by_lead, nomos_sync": ("by_lead", lead_by_sync),
    "by_lead, portal click": ("by_lead", lead_by_portal_click),
    "by_metadata, webhook": ("by_metadata", metadata_by_webhook),
    "by_metadata, nomos_sync": ("by_metadata", metadata_by_sync),
    "by_email, webhook": ("by_email", email_by_webhook),
    "by_email, nomos_sync": ("by_email", email_by_sync),
}


@pytest.mark.parametrize("active", [True, False], ids=["active", "inactive"])
@pytest.mark.parametrize("path", PATHS)
def test_each_resolver_on_each_path(path, active, nomos, alice, settings):
    rule, run = PATHS[path]
    only(settings, rule, LINK_BY_EMAIL=rule == "by_email")
    # Deactivated once the path's set-up (which may sign the account in) is done.
    customer_id = run(nomos, alice, settings, lambda: None if active else deactivate(alice))

    customer = NomosCustomer.objects.get(customer_id=customer_id)
    if active:
        assert (customer.user, customer.linked_by) == (alice, rule)
    else:
        assert customer.user is None and customer.linked_by == ""
        assert not NomosLinkClaim.objects.exists()


# -- the paths that link without a resolver ----------------------------------------------------


@pytest.fixture
def claim(alice: Any) -> NomosLinkClaim:
    customer = NomosCustomer.objects.create(customer_id="cus_held", email="other@example.com")
    return NomosLinkClaim.objects.create(customer=customer, user=alice, rule="by_lead",
                                         nonce="n0nce")


@pytest.mark.parametrize("active", [True, False], ids=["active", "inactive"])
def test_the_customers_mailbox_confirming_a_held_link(active, claim, alice, nomos, settings,
                                                      caplog):
    from nomos_billing.confirmation import confirmation_url

    settings.AUTHENTICATION_BACKENDS = ALLOW_INACTIVE
    url = confirmation_url(claim, "")
    if not active:
        deactivate(alice)
    client = Client()
    client.force_login(alice)
    client.post(url)
    claim.customer.refresh_from_db()
    assert (claim.customer.user == alice) is active
    refused = [r.getMessage() for r in caplog.records if "nothing linked" in r.getMessage()]
    assert refused == ([] if active else [
        "held link of Nomos customer cus_held followed while signed in as another account; "
        "nothing linked"])


@pytest.mark.parametrize("active", [True, False], ids=["active", "inactive"])
def test_an_operator_confirming_a_held_link(active, claim, alice, admin_client):
    if not active:
        deactivate(alice)
    admin_client.post(
        reverse("admin:nomos_billing_nomoslinkclaim_changelist"),
        {"action": "confirm_claims", "_selected_action": [claim.pk]},
    )
    claim.customer.refresh_from_db()
    assert (claim.customer.user == alice) is active


@pytest.mark.parametrize("active", [True, False], ids=["active", "inactive"])
def test_the_admins_link_form(active, alice, admin_client):
    customer = NomosCustomer.objects.create(customer_id="cus_hand", email="c@example.com")
    if not active:
        deactivate(alice)
    response = admin_client.post(
        reverse("admin:nomos_billing_nomoscustomer_changelist"),
        {"action": "link_to_user", "_selected_action": [customer.pk], "apply": "1",
         "user": "alice"},
    )
    customer.refresh_from_db()
    assert (customer.user == alice) is active
    if not active:
        assert response.status_code == 200
        assert b"This user is inactive." in response.content


def test_the_admins_link_form_refuses_a_user_linked_already(alice, admin_client):
    NomosCustomer.objects.create(customer_id="cus_had", email="a@example.com", user=alice)
    customer = NomosCustomer.objects.create(customer_id="cus_hand", email="c@example.com")
    response = admin_client.post(
        reverse("admin:nomos_billing_nomoscustomer_changelist"),
        {"action": "link_to_user", "_selected_action": [customer.pk], "apply": "1",
         "user": "alice"},
    )
    customer.refresh_from_db()
    assert customer.user is None
    assert b"This user is already linked to a Nomos customer." in response.content


def test_an_inactive_operator_with_the_link_permission_gets_nothing(
    django_user_model, alice, settings
):
    from django.contrib.auth.models import Permission

    settings.AUTHENTICATION_BACKENDS = ALLOW_INACTIVE
    operator = django_user_model.objects.create_user("op", "op@example.com", "pw", is_staff=True,
                                                     is_active=False)
    operator.user_permissions.set(Permission.objects.filter(
        codename__in=["view_nomoscustomer", "link_customer"]))
    customer = NomosCustomer.objects.create(customer_id="cus_hand", email="c@example.com")
    client = Client()
    client.force_login(operator)
    response = client.post(
        reverse("admin:nomos_billing_nomoscustomer_changelist"),
        {"action": "link_to_user", "_selected_action": [customer.pk], "apply": "1",
         "user": "alice"},
    )
    assert response.status_code in (302, 403)
    customer.refresh_from_db()
    assert customer.user is None


class GrantsLinking:
    """A site's permission backend that grants linking by group or rule, without looking at
    ``is_active`` (Django's ModelBackend would)."""

    def authenticate(self, request: Any, **credentials: Any) -> None:
        return None

    def has_perm(self, user_obj: Any, perm: str, obj: Any = None) -> bool:
        return perm == "nomos_billing.link_customer"


def test_the_link_permission_needs_an_active_account(django_user_model, rf, settings):
    """The mixin's own check (``has_link_permission``), which answers a linking POST with 403,
    holds whatever the site's permission backends say about inactive accounts."""
    from django.contrib import admin as django_admin

    from nomos_billing.admin.customers import NomosCustomerAdmin

    settings.AUTHENTICATION_BACKENDS = [
        "django.contrib.auth.backends.ModelBackend",
        f"{__name__}.GrantsLinking",
    ]
    operator = django_user_model.objects.create_user("op", "op@example.com", "pw", is_staff=True)
    request = rf.post("/")
    request.user = operator
    model_admin = NomosCustomerAdmin(NomosCustomer, django_admin.site)
    assert model_admin.has_link_permission(request) is True
    operator.is_active = False
    assert model_admin.has_link_permission(request) is False
