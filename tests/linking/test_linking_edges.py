"""``linking``'s own functions called directly: the checkout URL it builds, attaching and
detaching a user (rows, return values, signals, log lines). The webhook-level cases are in
test_linking.py and test_resolvers.py."""

from __future__ import annotations

import logging
from datetime import timedelta
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError

from nomos_billing import conf, signals
from nomos_billing.linking import (
    LinkRequest,
    attach_user,
    by_metadata,
    checkout_url,
    detach_user,
    hold,
    resolve_reference,
    user_address,
)
from nomos_billing.linking import user_reference as reference
from nomos_billing.models import NomosCustomer, NomosLinkClaim

pytestmark = pytest.mark.django_db

CHECKOUT = "https://home.checkout.energy/"


@pytest.fixture
def customer() -> NomosCustomer:
    return NomosCustomer.objects.create(customer_id="cus_edge", email="edge@example.com")


@pytest.fixture
def received(connect_receiver: Any) -> Any:
    seen: list[tuple[str, dict[str, Any]]] = []

    def linked(**kwargs: Any) -> None:
        seen.append(("linked", kwargs))

    def unlinked(**kwargs: Any) -> None:
        seen.append(("unlinked", kwargs))

    connect_receiver(signals.customer_linked, linked)
    connect_receiver(signals.customer_unlinked, unlinked)
    return seen


#: checkout_url() came before its setting: until CHECKOUT_URL is a known setting (issue 8's
#: work), reading it raises AttributeError and these cases are skipped, visibly.
needs_checkout_setting = pytest.mark.skipif(
    "CHECKOUT_URL" not in conf.DEFAULTS, reason="CHECKOUT_URL is not a known setting yet")


def with_checkout(settings: Any, url: Any) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "CHECKOUT_URL": url}


# -- checkout_url -----------------------------------------------------------------------------


@needs_checkout_setting
@pytest.mark.parametrize("url", [None, "", 42])
def test_checkout_url_without_the_setting_names_it(settings, alice, url):
    with_checkout(settings, url)
    with pytest.raises(ImproperlyConfigured, match=r"^NOMOS_BILLING\['CHECKOUT_URL'\] is not set$"):
        checkout_url(alice)


@needs_checkout_setting
def test_checkout_url_prefills_zip_and_usage_and_signs_the_user(settings, alice):
    with_checkout(settings, CHECKOUT)
    url = urlsplit(checkout_url(alice, zip="10115", usage=2500))
    assert (url.scheme, url.netloc, url.path, url.fragment) == (
        "https", "home.checkout.energy", "/", "")
    assert parse_qsl(url.query) == [("zip", "10115"), ("usage", "2500"),
                                    ("metadata.django_user_id", reference(alice))]
    assert resolve_reference(dict(parse_qsl(url.query))["metadata.django_user_id"]) == alice


@needs_checkout_setting
def test_checkout_url_keeps_the_settings_query_first_and_drops_a_fragment(settings, alice):
    with_checkout(settings, "https://home.checkout.energy?utm_source=site#top")
    url = urlsplit(checkout_url(alice, usage=0))
    assert url.path == "/" and url.fragment == ""
    assert url.query.startswith("utm_source=site&usage=0&metadata.django_user_id=")
    assert parse_qsl(url.query) == [("utm_source", "site"), ("usage", "0"),
                                    ("metadata.django_user_id", reference(alice))]


@needs_checkout_setting
def test_checkout_url_leaves_out_empty_zip_and_usage(settings, alice):
    with_checkout(settings, CHECKOUT + "start")
    url = urlsplit(checkout_url(alice, zip="", usage=None))
    assert urlsplit(checkout_url(alice, zip=None, usage="")).query == url.query
    assert url.path == "/start"
    # keep_blank_values: a "zip=" with nothing after it must not be there either.
    assert parse_qsl(url.query, keep_blank_values=True) == [
        ("metadata.django_user_id", reference(alice))]


@needs_checkout_setting
def test_checkout_url_uses_the_configured_metadata_key(settings, alice):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "CHECKOUT_URL": CHECKOUT,
                              "METADATA_USER_KEY": "site_user"}
    assert parse_qsl(urlsplit(checkout_url(alice, zip=12345)).query) == [
        ("zip", "12345"), ("metadata.site_user", reference(alice))]


# -- attach_user / detach_user ----------------------------------------------------------------


def test_attach_links_an_unlinked_customer_once(customer, alice, received, caplog):
    with caplog.at_level(logging.INFO, logger="nomos_billing"):
        assert attach_user(customer, alice, "admin") is True
    row = NomosCustomer.objects.get(pk=customer.pk)
    assert (row.user, row.linked_by, row.linked_at is not None) == (alice, "admin", True)
    assert (customer.user, customer.linked_by, customer.linked_at) == (
        alice, "admin", row.linked_at)
    assert received == [("linked", {"signal": signals.customer_linked, "sender": NomosCustomer,
                                    "customer": customer, "user": alice, "resolver": "admin"})]
    assert f"Nomos customer cus_edge linked to user {alice.pk} (admin)" in caplog.messages


def test_attach_to_a_customer_linked_meanwhile_changes_nothing(customer, alice, bob, received):
    NomosCustomer.objects.filter(pk=customer.pk).update(user=bob, linked_by="by_email")
    assert attach_user(customer, alice, "admin") is False
    assert NomosCustomer.objects.get(pk=customer.pk).user == bob
    assert received == []


def test_attach_a_user_who_holds_another_customer_is_refused(customer, alice, received, caplog):
    NomosCustomer.objects.create(customer_id="cus_other", user=alice)
    with caplog.at_level(logging.WARNING, logger="nomos_billing"):
        assert attach_user(customer, alice, "admin") is False
    assert NomosCustomer.objects.get(pk=customer.pk).user is None
    assert received == []
    assert (f"Nomos customer cus_edge resolves to user {alice.pk}, who is already linked to "
            "another customer; left unlinked") in caplog.messages


def test_detach_unlinks_and_returns_the_user(customer, alice, received, caplog):
    assert attach_user(customer, alice, "admin") is True
    received.clear()
    with caplog.at_level(logging.INFO, logger="nomos_billing"):
        assert detach_user(customer, "admin") == alice
    row = NomosCustomer.objects.get(pk=customer.pk)
    assert (row.user, row.linked_by, row.linked_at) == (None, "", None)
    assert (customer.user, customer.linked_by, customer.linked_at) == (None, "", None)
    assert received == [("unlinked", {"signal": signals.customer_unlinked,
                                      "sender": NomosCustomer, "customer": customer,
                                      "user": alice, "unlinked_by": "admin"})]
    assert f"Nomos customer cus_edge unlinked from user {alice.pk} (admin)" in caplog.messages


def test_detach_an_unlinked_customer_returns_none(customer, received):
    assert detach_user(customer, "admin") is None
    assert received == []


def test_detach_does_not_undo_a_relink_it_did_not_see(customer, alice, bob, received):
    assert attach_user(customer, alice, "admin") is True
    received.clear()
    # Someone else unlinked alice and linked bob since we read the row.
    NomosCustomer.objects.filter(pk=customer.pk).update(user=bob, linked_by="admin")
    assert detach_user(customer, "admin") is None
    assert NomosCustomer.objects.get(pk=customer.pk).user == bob
    assert customer.user == alice  # our stale copy is left as it was
    assert received == []


# -- why a metadata value links nobody ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [(7, "not a string"), ("7", "not a signed user reference"),
     ("7:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "bad signature")],
)
def test_a_rejected_metadata_value_is_logged_with_its_reason(customer, value, reason, caplog):
    link = LinkRequest(customer, {"metadata": {"django_user_id": value}})
    with caplog.at_level(logging.INFO, logger="nomos_billing.linking"):
        assert by_metadata(link) is None
    assert caplog.messages == [
        f"Nomos customer cus_edge: metadata 'django_user_id' is {reason}; not linked by metadata"]


def test_a_reference_to_an_inactive_user_is_logged_as_such(customer, alice, caplog):
    alice.is_active = False
    alice.save()
    link = LinkRequest(customer, {"metadata": {"django_user_id": reference(alice)}})
    with caplog.at_level(logging.INFO, logger="nomos_billing.linking"):
        assert by_metadata(link) is None
    assert caplog.messages == ["Nomos customer cus_edge: metadata 'django_user_id' is names an "
                               "inactive user; not linked by metadata"]


def test_a_reference_to_a_deleted_user_is_logged_as_naming_no_user(customer, alice, caplog):
    value = reference(alice)
    alice.delete()
    link = LinkRequest(customer, {"metadata": {"django_user_id": value}})
    with caplog.at_level(logging.INFO, logger="nomos_billing.linking"):
        assert by_metadata(link) is None
    assert caplog.messages == ["Nomos customer cus_edge: metadata 'django_user_id' is names no "
                               "user; not linked by metadata"]


def test_a_reference_whose_pk_is_not_written_as_the_user_writes_it_names_no_user(
    customer, alice, caplog
):
    # Signed by us, but "0<pk>" is not how the user's pk writes itself: the same "names no
    # user" as a deleted user, not a reason of its own.
    from django.core import signing

    from nomos_billing.linking import REFERENCE_SALT

    value = signing.Signer(salt=REFERENCE_SALT).sign(f"0{alice.pk}")
    link = LinkRequest(customer, {"metadata": {"django_user_id": value}})
    with caplog.at_level(logging.INFO, logger="nomos_billing.linking"):
        assert by_metadata(link) is None
    assert caplog.messages == ["Nomos customer cus_edge: metadata 'django_user_id' is names no "
                               "user; not linked by metadata"]


def test_a_reference_needs_a_saved_user(django_user_model):
    with pytest.raises(ValueError, match=r"^user_reference needs a saved user$"):
        reference(django_user_model(username="unsaved"))
    for stand_in in (None, SimpleNamespace()):
        with pytest.raises(ValueError, match=r"^user_reference needs a saved user$"):
            reference(stand_in)


@pytest.mark.parametrize("pk", ["a b", "ä", "x" * 65, "1:2"])
def test_a_reference_refuses_a_primary_key_it_could_not_read_back(pk):
    with pytest.raises(ValueError, match=(
            r"^this user model's primary key cannot be used in a user reference$")):
        reference(SimpleNamespace(pk=pk))


def test_attaching_the_same_user_again_changes_nothing_and_warns_nobody(customer, alice,
                                                                         received, caplog):
    assert attach_user(customer, alice, "admin") is True
    received.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nomos_billing"):
        assert attach_user(customer, alice, "by_email") is False
    assert NomosCustomer.objects.get(pk=customer.pk).linked_by == "admin"
    assert caplog.messages == [] and received == []


def test_attach_links_only_the_customer_it_is_given(customer, alice):
    other = NomosCustomer.objects.create(customer_id="cus_bystander")
    assert attach_user(customer, alice, "admin") is True
    assert NomosCustomer.objects.get(pk=other.pk).user is None


def test_detach_records_when_the_row_changed(customer, alice):
    assert attach_user(customer, alice, "admin") is True
    before = NomosCustomer.objects.get(pk=customer.pk).updated_at
    NomosCustomer.objects.filter(pk=customer.pk).update(updated_at=before - timedelta(days=1))
    assert detach_user(customer, "admin") == alice
    assert NomosCustomer.objects.get(pk=customer.pk).updated_at >= before


# -- hold / user_address ----------------------------------------------------------------------


def test_a_hold_logs_the_rule_and_the_user_once(customer, alice, connect_receiver, caplog):
    held = connect_receiver(signals.customer_link_held)
    with caplog.at_level(logging.WARNING, logger="nomos_billing.linking"):
        assert hold(customer, alice, "by_lead") is True
    assert caplog.messages == [
        f"Nomos customer cus_edge found by_lead for user {alice.pk}, whose e-mail address is not "
        "the customer's: link held until the customer's mailbox or an operator confirms it"]
    assert held.call_count == 1


def test_a_hold_raised_meanwhile_by_another_delivery_is_not_new(
        customer, alice, connect_receiver, monkeypatch):
    # The unique (customer, user) constraint decided a race: the other delivery announced it.
    held = connect_receiver(signals.customer_link_held)

    def raced(**kwargs: Any) -> Any:
        raise IntegrityError("nomos_billing_nomoslinkclaim unique (customer, user)")

    monkeypatch.setattr(NomosLinkClaim.objects, "get_or_create", raced)
    assert hold(customer, alice, "by_lead") is False
    assert held.call_count == 0


def test_user_address_reads_the_models_email_field(alice):
    assert user_address(alice) == alice.email
    # A stand-in that is no Django user model: its ``email``, or "" without a usable one.
    assert user_address(SimpleNamespace(email="stand-in@example.com")) == "stand-in@example.com"
    assert user_address(SimpleNamespace()) == ""
    assert user_address(SimpleNamespace(email=None)) == ""


def test_customer_relation_of_anyone_but_a_signed_in_user_of_the_model_is_none(alice):
    from django.contrib.auth.models import AnonymousUser
    from django.utils.functional import SimpleLazyObject

    from nomos_billing.linking import customer_relation

    # The reverse one-to-one, also through request.user's lazy wrapper.
    for user in (alice, SimpleLazyObject(lambda: alice)):
        assert customer_relation(user).related_model is NomosCustomer
    for stand_in in (None, AnonymousUser(), SimpleNamespace(),
                     SimpleNamespace(is_authenticated=True)):
        assert customer_relation(stand_in) is None


def test_by_lead_reads_the_lead_from_the_event_or_else_the_subscription(customer, alice, bob):
    from nomos_billing.linking import by_lead
    from nomos_billing.models import NomosLead

    NomosLead.objects.create(lead_id="lead_alice", user=alice)
    NomosLead.objects.create(lead_id="lead_bob", user=bob)
    assert by_lead(LinkRequest(customer, {"lead": "lead_alice"})) == alice
    # The event's lead comes first.
    assert by_lead(LinkRequest(customer, {"lead": "lead_alice"}, lead_id="lead_bob")) == bob
    # A lead id that is not a string is nothing Nomos sends: not looked up, even where the
    # database would compare it equal to a stored id.
    NomosLead.objects.create(lead_id="7", user=bob)
    for subscription in (None, {}, {"lead": None}, {"lead": 7}, {"lead": "lead_unknown"}):
        assert by_lead(LinkRequest(customer, subscription)) is None


def test_by_lead_reads_the_lead_and_its_user_in_one_query(
        customer, alice, django_assert_num_queries):
    from nomos_billing.linking import by_lead
    from nomos_billing.models import NomosLead

    NomosLead.objects.create(lead_id="lead_alice", user=alice)
    with django_assert_num_queries(1):
        assert by_lead(LinkRequest(customer, None, lead_id="lead_alice")).is_active


def test_the_resolvers_a_caller_passes_are_the_ones_asked(customer, alice, bob):
    from nomos_billing.linking import link_customer, resolve_user

    link = LinkRequest(customer, None)
    assert resolve_user(link, [("mine", lambda link: alice)]) == (alice, "mine")
    assert resolve_user(link, [("site.resolvers.none", lambda link: None),
                               ("site.resolvers.by_bob", lambda link: bob)]) == (bob, "by_bob")
    assert resolve_user(link, []) == (None, None)
    assert link_customer(link, resolvers=[("site.resolvers.mine", lambda link: alice)]) is True
    row = NomosCustomer.objects.get(pk=customer.pk)
    assert (row.user, row.linked_by) == (alice, "mine")


def test_link_customer_logs_a_customer_no_resolver_found(customer, caplog):
    from nomos_billing.linking import link_customer

    with caplog.at_level(logging.INFO, logger="nomos_billing.linking"):
        assert link_customer(LinkRequest(customer, None), resolvers=[]) is False
    assert caplog.messages == ["Nomos customer cus_edge could not be linked to a user"]


def test_link_customer_names_an_unnamed_resolver_resolver(customer, alice):
    from nomos_billing.linking import link_customer

    assert link_customer(LinkRequest(customer, None), resolvers=[("", lambda link: alice)])
    assert NomosCustomer.objects.get(pk=customer.pk).linked_by == "resolver"


def test_link_customer_holds_a_bound_find_for_another_address_and_says_not_linked(
        customer, alice):
    from nomos_billing.linking import link_customer

    # by_lead is bound to the address: alice's is not the customer's (edge@example.com).
    assert link_customer(LinkRequest(customer, None),
                         resolvers=[("x.by_lead", lambda link: alice)]) is False
    assert NomosCustomer.objects.get(pk=customer.pk).user is None
    assert NomosLinkClaim.objects.get(customer=customer).user == alice
