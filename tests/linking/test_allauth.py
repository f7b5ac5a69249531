"""Linking by an address django-allauth has verified, against the real django-allauth.

``nomos_billing.allauth.by_verified_email`` as the only resolver; each case is a signed
``subscription.created`` for the sandbox's customer (address ``kiss@example.com``) and looks at
who the customer row is linked to. Only a verified *primary* address of one active user, the
same plain ASCII address in any ASCII case, links; a look-alike that PostgreSQL's ``UPPER()``
folds into the customer's address never does, on SQLite or PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.linking.test_addresses import ALICE, LOOK_ALIKES, deliver_alice

pytest.importorskip("allauth", reason="django-allauth is not installed (pip install -e '.[test]')")

from allauth.account.models import EmailAddress

RESOLVER = "nomos_billing.allauth.by_verified_email"

pytestmark = pytest.mark.django_db


def deliver(nomos: Any, settings: Any) -> Any:
    return deliver_alice(nomos, settings, USER_RESOLVERS=[RESOLVER])


def user_with_address(
    django_user_model: Any, name: str, address: str, *, verified: bool = True,
    primary: bool = True, active: bool = True
) -> Any:
    # The user's own e-mail field is left empty: only allauth's record is trusted.
    user = django_user_model.objects.create_user(name, "", "pw", is_active=active)
    EmailAddress.objects.create(user=user, email=address, verified=verified, primary=primary)
    return user


@pytest.mark.parametrize("address", [ALICE, "Kiss@Example.COM"])
def test_a_verified_primary_address_links(nomos, settings, django_user_model, address):
    user = user_with_address(django_user_model, "alice", address)
    # A verified look-alike of someone else beside it changes nothing.
    user_with_address(django_user_model, "lookalike", LOOK_ALIKES["kelvin"])

    customer = deliver(nomos, settings)

    assert (customer.user, customer.linked_by) == (user, "by_verified_email")


def test_an_unverified_address_does_not_link(nomos, settings, django_user_model):
    user_with_address(django_user_model, "alice", ALICE, verified=False)
    assert deliver(nomos, settings).user is None


def test_a_verified_address_that_is_not_primary_does_not_link(nomos, settings, django_user_model):
    user = user_with_address(django_user_model, "alice", "alice-now@example.com")
    EmailAddress.objects.create(user=user, email=ALICE, verified=True, primary=False)
    assert deliver(nomos, settings).user is None


def test_an_inactive_user_is_not_linked(nomos, settings, django_user_model):
    user_with_address(django_user_model, "alice", ALICE, active=False)
    assert deliver(nomos, settings).user is None


def test_the_user_models_own_address_is_not_trusted(nomos, settings, django_user_model):
    # What LINK_BY_EMAIL would have linked: an address typed in, never verified.
    django_user_model.objects.create_user("alice", ALICE, "pw")
    assert deliver(nomos, settings).user is None


@pytest.mark.parametrize("address", LOOK_ALIKES.values(), ids=LOOK_ALIKES.keys())
def test_a_verified_look_alike_does_not_link(nomos, settings, django_user_model, address):
    user = user_with_address(django_user_model, "lookalike", address)
    # Stored as given: the database must not have normalised the look-alike away.
    assert EmailAddress.objects.get(user=user).email == address

    customer = deliver(nomos, settings)

    assert customer.email == ALICE
    assert customer.user is None


def test_two_users_with_the_address_apart_from_case_link_nobody(
    nomos, settings, django_user_model
):
    user_with_address(django_user_model, "alice", ALICE)
    user_with_address(django_user_model, "alice2", ALICE.upper())
    assert deliver(nomos, settings).user is None


def test_a_customer_with_a_look_alike_address_links_nobody(nomos, settings, django_user_model):
    user_with_address(django_user_model, "alice", ALICE)
    nomos.customers["cus_sandbox_alice"]["email"] = LOOK_ALIKES["dotless-i"]
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "USER_RESOLVERS": [RESOLVER]}
    from django.test import Client

    from nomos_billing.models import NomosCustomer
    from nomos_billing.sandbox import seed
    from nomos_billing.testing import make_event, post_event

    event = make_event("subscription.created", {"subscription": seed.ALICE_SUBSCRIPTION})
    assert post_event(Client(), event).status_code == 200
    assert NomosCustomer.objects.get(customer_id=seed.ALICE).user is None


def test_without_allauth_in_installed_apps_the_check_names_the_setting(tmp_path: Path):
    """Installed but not in INSTALLED_APPS: ``manage.py check`` says so (E010), it does not
    crash, and no webhook finds out first."""
    (tmp_path / "no_allauth_settings.py").write_text(
        "from tests.settings import *  # noqa\n"
        "INSTALLED_APPS = [a for a in INSTALLED_APPS if not a.startswith('allauth')]\n"
        "MIDDLEWARE = [m for m in MIDDLEWARE if not m.startswith('allauth')]\n"
        f"NOMOS_BILLING = {{**NOMOS_BILLING, 'USER_RESOLVERS': [{RESOLVER!r}]}}\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)]),
        "DJANGO_SETTINGS_MODULE": "no_allauth_settings",
    }
    result = subprocess.run(
        [sys.executable, "-m", "django", "check"],
        capture_output=True, text=True, env=env, cwd=root, timeout=120,
    )
    assert result.returncode != 0
    assert "nomos_billing.E010" in result.stderr
    assert "'allauth' and 'allauth.account' in INSTALLED_APPS" in result.stderr
