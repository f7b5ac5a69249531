"""Signed user references: only a value this site signed links a customer through metadata.

Subscription metadata can be written by anyone through the hosted checkout's URL
(``?metadata.django_user_id=1``). Each case is delivered as a real signed webhook against the
sandbox and must answer 200, leave the customer unlinked (or linked ``by_metadata`` for the two
valid cases) and raise nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.core import signing
from django.test import override_settings

from nomos_billing import linking
from nomos_billing.linking import REFERENCE_SALT, resolve_reference, user_reference
from nomos_billing.models import NomosCustomer
from nomos_billing.sandbox import seed
from nomos_billing.testing import make_event, post_event

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_user_1(django_user_model: Any) -> Any:
    # The victim of the attack in the issue: the first superuser.
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw")


def deliver_with_metadata(client: Any, nomos: Any, value: Any) -> NomosCustomer:
    nomos.subscriptions[seed.ALICE_SUBSCRIPTION]["metadata"] = {"django_user_id": value}
    event = make_event("subscription.created", {"subscription": seed.ALICE_SUBSCRIPTION})
    response = post_event(client, event)
    assert response.status_code == 200, response.content
    return NomosCustomer.objects.get(customer_id=seed.ALICE)


def signature(value: str) -> str:
    return value.rsplit(":", 1)[1]


def other_key_reference(user: Any) -> str:
    with override_settings(SECRET_KEY="another-site-entirely", SECRET_KEY_FALLBACKS=[]):
        return user_reference(user)


def arabic_indic(text: str) -> str:
    return text.translate({ord(d): chr(0x0660 + int(d)) for d in "0123456789"})


def fullwidth(text: str) -> str:
    return text.translate({ord(d): chr(0xFF10 + int(d)) for d in "0123456789"})


#: How the issue's attacker wrote the superuser's pk (``str(pk)`` in, something else out).
LENIENT = {
    "bare": str,
    "bare-int": int,
    "leading-space": lambda pk: f" {pk}",
    "trailing-space": lambda pk: f"{pk} ",
    "plus": lambda pk: f"+{pk}",
    "leading-zeros": lambda pk: f"00{pk}",
    "newline": lambda pk: f"{pk}\n",
    "arabic-indic": arabic_indic,
    "fullwidth": fullwidth,
    "float": lambda pk: f"{pk}.0",
}


@pytest.mark.parametrize("form", LENIENT.values(), ids=LENIENT.keys())
def test_bare_or_lenient_pk_in_metadata_links_nobody(form, nomos, client, admin_user_1):
    customer = deliver_with_metadata(client, nomos, form(str(admin_user_1.pk)))
    assert (customer.user, customer.linked_by) == (None, "")


@pytest.mark.parametrize("form", [f for k, f in LENIENT.items() if k not in ("bare", "bare-int")],
                         ids=[k for k in LENIENT if k not in ("bare", "bare-int")])
def test_valid_signature_behind_a_lenient_pk_links_nobody(form, nomos, client, admin_user_1):
    sig = signature(user_reference(admin_user_1))
    customer = deliver_with_metadata(client, nomos, f"{form(str(admin_user_1.pk))}:{sig}")
    assert customer.user is None


def test_reference_signed_for_another_user_and_edited_links_nobody(nomos, client, admin_user_1,
                                                                   alice):
    forged = f"{admin_user_1.pk}:{signature(user_reference(alice))}"
    customer = deliver_with_metadata(client, nomos, forged)
    assert customer.user is None


def test_reference_with_a_whitespace_tail_links_nobody(nomos, client, alice):
    customer = deliver_with_metadata(client, nomos, user_reference(alice) + "\n")
    assert customer.user is None


def test_reference_signed_with_another_secret_key_links_nobody(nomos, client, alice):
    customer = deliver_with_metadata(client, nomos, other_key_reference(alice))
    assert customer.user is None


def test_value_django_signed_for_another_purpose_links_nobody(nomos, client, alice):
    # Same SECRET_KEY, no salt (or another app's salt): not a user reference.
    customer = deliver_with_metadata(client, nomos, signing.Signer().sign(str(alice.pk)))
    assert customer.user is None


def test_reference_for_an_inactive_user_links_nobody(nomos, client, alice):
    reference = user_reference(alice)
    alice.is_active = False
    alice.save()
    customer = deliver_with_metadata(client, nomos, reference)
    assert customer.user is None


def test_reference_for_a_deleted_user_links_nobody(nomos, client, alice):
    reference = user_reference(alice)
    alice.delete()
    assert deliver_with_metadata(client, nomos, reference).user is None


def test_valid_reference_links_by_metadata(nomos, client, alice):
    customer = deliver_with_metadata(client, nomos, user_reference(alice))
    assert (customer.user, customer.linked_by) == (alice, "by_metadata")


def test_reference_signed_with_a_key_now_in_fallbacks_links(nomos, client, alice, settings):
    settings.SECRET_KEY = "old-key-before-rotation"
    settings.SECRET_KEY_FALLBACKS = []
    reference = user_reference(alice)
    settings.SECRET_KEY = "new-key-after-rotation"
    assert resolve_reference(reference) is None  # the old key alone is gone...
    settings.SECRET_KEY_FALLBACKS = ["old-key-before-rotation"]
    customer = deliver_with_metadata(client, nomos, reference)  # ...the fallback accepts it
    assert (customer.user, customer.linked_by) == (alice, "by_metadata")
    assert user_reference(alice) != reference  # new references use the new key


def test_rejection_is_logged_at_info_with_the_customer_id_never_the_signature(
    nomos, client, alice, admin_user_1, caplog
):
    forged = f"{admin_user_1.pk}:{signature(user_reference(alice))}"
    with caplog.at_level(logging.INFO, logger="nomos_billing"):
        deliver_with_metadata(client, nomos, forged)
    lines = [r for r in caplog.records if r.name == "nomos_billing.linking"]
    rejected = [r for r in lines if "metadata" in r.getMessage()]
    assert rejected and all(r.levelno == logging.INFO for r in rejected)
    assert seed.ALICE in rejected[0].getMessage()
    assert "bad signature" in rejected[0].getMessage()
    assert not any(signature(forged) in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("make_value", "reason"), [
    (lambda alice: 7, "not a string"),
    (lambda alice: "7", "not a signed user reference"),
    (lambda alice: other_key_reference(alice), "bad signature"),
    # Signed by us, but no user of this model could have that pk (a ValueError in the query).
    (lambda alice: signing.Signer(salt=REFERENCE_SALT).sign("not-a-number"), "names no user"),
    (lambda alice: signing.Signer(salt=REFERENCE_SALT).sign("99999"), "names no user"),
    # Signed by us for a pk that reads back differently ("007" is user 7 to the database).
    (lambda alice: signing.Signer(salt=REFERENCE_SALT).sign(f"00{alice.pk}"), "names no user"),
    (lambda alice: user_reference(alice), "names an inactive user"),
])
def test_each_refused_reference_logs_why(nomos, client, alice, caplog, make_value, reason):
    value = make_value(alice)
    if reason == "names an inactive user":
        alice.is_active = False
        alice.save()
    with caplog.at_level(logging.INFO, logger="nomos_billing.linking"):
        assert deliver_with_metadata(client, nomos, value).user is None
    assert (f"Nomos customer {seed.ALICE}: metadata 'django_user_id' is {reason}; "
            "not linked by metadata") in caplog.messages


# -- the functions themselves ---------------------------------------------------------------


def test_reference_round_trips_and_is_short_and_url_safe(alice):
    reference = user_reference(alice)
    assert resolve_reference(reference) == alice
    assert len(reference) <= 64
    assert reference.startswith(f"{alice.pk}:")
    assert all(c.isascii() and (c.isalnum() or c in "-_:") for c in reference)


def test_reference_uses_its_own_salt(alice):
    assert signing.Signer(salt=REFERENCE_SALT).unsign(user_reference(alice)) == str(alice.pk)
    with pytest.raises(signing.BadSignature):
        signing.Signer().unsign(user_reference(alice))


@pytest.mark.parametrize("value", [None, 1, b"1:abc", ["1"], "", ":", "1:", "x" * 500])
def test_resolve_reference_answers_none_for_junk(value, alice):
    assert resolve_reference(value) is None


def test_user_reference_needs_a_saved_user(django_user_model):
    with pytest.raises(ValueError):
        user_reference(django_user_model(username="unsaved"))


def test_default_resolvers_are_the_linking_module_s():
    assert [resolver for _, resolver in linking.get_resolvers()] == [
        linking.by_lead,
        linking.by_metadata,
        linking.by_email,
    ]


@pytest.mark.django_db
def test_linking_a_customer_moves_its_updated_time(django_user_model):
    from datetime import timedelta

    from django.utils import timezone

    user = django_user_model.objects.create_user("upd", "upd@example.com", "pw")
    customer = NomosCustomer.objects.create(customer_id="cus_upd", email="upd@example.com")
    long_ago = timezone.now() - timedelta(days=3)
    NomosCustomer.objects.filter(pk=customer.pk).update(updated_at=long_ago)

    assert linking.attach_user(customer, user, "admin") is True
    stored = NomosCustomer.objects.get(pk=customer.pk)
    assert stored.user == user and stored.updated_at > long_ago + timedelta(days=2)
    assert stored.updated_at == stored.linked_at
