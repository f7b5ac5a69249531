"""Linking Nomos customers to site users, through webhook deliveries: the built-in resolvers
(metadata, lead, e-mail), a site's own resolver by dotted path, and the rules that a linked
customer is never moved and a user never gets a second customer."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model

from nomos_billing import signals
from nomos_billing.linking import (
    LinkRequest,
    attach_user,
    by_metadata,
    link_customer,
    user_reference,
)
from nomos_billing.models import NomosCustomer, NomosLead
from nomos_billing.sandbox import seed
from nomos_billing.testing import make_event, post_event

pytestmark = pytest.mark.django_db


def resolve_by_last_name(link: LinkRequest) -> Any:
    """A site's own resolver (configured by dotted path in a test)."""
    return get_user_model().objects.filter(last_name=link.customer.last_name).first()


def deliver(client, sub_id: str = seed.ALICE_SUBSCRIPTION, topic: str = "subscription.created",
            **context: Any) -> NomosCustomer:
    response = post_event(client, make_event(topic, {"subscription": sub_id, **context}))
    assert response.status_code == 200, response.content
    sub_customer = {seed.ALICE_SUBSCRIPTION: seed.ALICE, seed.ACME_CONSUMPTION: seed.ACME}
    if sub_id in sub_customer:
        return NomosCustomer.objects.get(customer_id=sub_customer[sub_id])
    return NomosCustomer.objects.get(subscriptions__subscription_id=sub_id)


@pytest.fixture
def user_1(django_user_model):
    return django_user_model.objects.create(pk=1, username="alice", email="alice@example.com")


@pytest.fixture
def linked_signals(connect_receiver):
    seen: list[tuple[str, Any, str]] = []

    def receiver(sender, customer, user, resolver, **kwargs):
        seen.append((customer.customer_id, user, resolver))

    connect_receiver(signals.customer_linked, receiver)
    return seen


def with_settings(settings, **values: Any) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, **values}


def sign_alice_for(nomos, user, key: str = "django_user_id") -> None:
    nomos.subscriptions[seed.ALICE_SUBSCRIPTION]["metadata"] = {key: user_reference(user)}


def test_signed_metadata_reference_links_the_customer(nomos, client, user_1, linked_signals):
    sign_alice_for(nomos, user_1)
    customer = deliver(client)
    assert (customer.user, customer.linked_by) == (user_1, "by_metadata")
    assert customer.linked_at is not None
    assert linked_signals == [(seed.ALICE, user_1, "by_metadata")]


def test_custom_metadata_key_is_used(nomos, client, user_1, settings):
    with_settings(settings, METADATA_USER_KEY="my_user")
    sign_alice_for(nomos, user_1, "my_user")
    assert deliver(client).user == user_1


def test_reference_under_another_key_links_nobody(nomos, client, user_1):
    sign_alice_for(nomos, user_1, "other_key")
    assert deliver(client).user is None


@pytest.mark.parametrize("value", ["1", 1, "999", "abc", "", None, True, 1.0, ["1"], {"pk": 1}])
def test_metadata_naming_no_valid_user_keeps_the_customer_unlinked(value, nomos, client,
                                                                   user_1):
    nomos.subscriptions[seed.ALICE_SUBSCRIPTION]["metadata"] = {"django_user_id": value}
    customer = deliver(client)
    assert customer.user is None and customer.linked_by == ""


def test_inactive_user_is_not_linked(nomos, client, user_1):
    sign_alice_for(nomos, user_1)
    user_1.is_active = False
    user_1.save()
    assert deliver(client).user is None


@pytest.mark.parametrize(
    ("enabled", "users", "linked"),
    [
        (False, ["alice@example.com"], False),
        (True, ["alice@example.com"], True),
        (True, ["ALICE@Example.com"], True),
        (True, ["alice@example.com", "Alice@example.com"], False),
        (True, ["other@example.com"], False),
    ],
    ids=["disabled", "unique", "case-insensitive", "ambiguous", "no match"],
)
def test_email_links_only_when_enabled_and_unique(enabled, users, linked, nomos, client,
                                                  settings, django_user_model):
    with_settings(settings, LINK_BY_EMAIL=enabled)
    nomos.subscriptions[seed.ALICE_SUBSCRIPTION]["metadata"] = None
    created = [django_user_model.objects.create(username=f"u{i}", email=email)
               for i, email in enumerate(users)]
    customer = deliver(client)
    if linked:
        assert (customer.user, customer.linked_by) == (created[0], "by_email")
    else:
        assert customer.user is None


def test_site_resolver_by_dotted_path_links(nomos, client, settings, django_user_model):
    with_settings(settings, USER_RESOLVERS=["tests.linking.test_resolvers.resolve_by_last_name"])
    user = django_user_model.objects.create(username="bob", last_name="Builder")
    customer = deliver(client, seed.ACME_CONSUMPTION)
    assert (customer.user, customer.linked_by) == (user, "resolve_by_last_name")


def test_resolvers_run_in_order_and_first_match_wins(nomos, client, settings, user_1,
                                                     django_user_model):
    with_settings(settings, USER_RESOLVERS=["tests.linking.test_resolvers.resolve_by_last_name",
                                            "nomos_billing.linking.by_metadata"])
    sign_alice_for(nomos, user_1)
    other = django_user_model.objects.create(username="other", last_name="Example")
    assert deliver(client).user == other


def test_linking_dotted_paths_name_the_resolvers(nomos, client, user_1, settings):
    with_settings(settings, USER_RESOLVERS=["nomos_billing.linking.by_metadata"])
    sign_alice_for(nomos, user_1)
    assert deliver(client).linked_by == "by_metadata"


def test_unresolvable_customer_is_kept_unlinked(nomos, client):
    customer = deliver(client)  # no user 1 exists
    assert customer.user is None
    assert customer.subscriptions.count() == 1


def test_linked_customer_is_not_moved_to_another_user(nomos, client, user_1,
                                                      django_user_model, linked_signals):
    owner = django_user_model.objects.create(username="owner")
    sign_alice_for(nomos, user_1)
    NomosCustomer.objects.create(customer_id=seed.ALICE, user=owner, linked_by="admin")
    customer = deliver(client)
    assert (customer.user, customer.linked_by) == (owner, "admin")
    assert linked_signals == []


def test_user_already_holding_a_customer_gets_no_second_one(nomos, client, user_1):
    sign_alice_for(nomos, user_1)
    NomosCustomer.objects.create(customer_id="cus_other", user=user_1)
    customer = deliver(client)
    assert customer.user is None
    assert NomosCustomer.objects.get(customer_id="cus_other").user == user_1


def test_lead_created_for_a_user_links_the_converted_customer(nomos, client,
                                                              django_user_model):
    # The lead form sends the user's address, so the checkout's customer carries it.
    user = django_user_model.objects.create(username="lead-user", email="lead@example.com")
    lead = nomos.create_lead({"plan": "pln_sandbox_home", "address": {"zip": "10115"},
                              "meter": {"estimated_usage": 2000},
                              "customer": {"email": "lead@example.com"}}, nomos.base_url)
    NomosLead.objects.create(lead_id=lead["id"], user=user)
    sub = nomos.convert_lead(lead["id"])
    event = nomos.build_event("subscription.created", {"subscription": sub["id"]})
    assert event["context"]["lead"] == lead["id"]
    assert post_event(client, event).status_code == 200
    customer = NomosCustomer.objects.get(customer_id=sub["customer"]["id"])
    assert (customer.user, customer.linked_by) == (user, "by_lead")
    assert customer.subscriptions.get().lead_id == lead["id"]


def test_lead_unknown_to_the_site_links_nobody(nomos, client):
    customer = deliver(client, lead="lead_unknown")
    assert customer.user is None


def test_by_metadata_ignores_non_dict_metadata():
    customer = NomosCustomer(customer_id="cus_x")
    assert by_metadata(LinkRequest(customer, subscription={"metadata": "1"})) is None
    assert by_metadata(LinkRequest(customer, subscription=None)) is None


def test_link_customer_returns_false_for_linked_customer(user_1):
    customer = NomosCustomer.objects.create(customer_id="cus_x", user=user_1)
    metadata = {"django_user_id": user_reference(user_1)}
    assert link_customer(LinkRequest(customer, {"metadata": metadata})) is False


def test_concurrent_link_of_the_same_user_loses_to_the_constraint(monkeypatch, user_1,
                                                                  linked_signals):
    # The "user already taken" check passed (a race), the one-to-one constraint decides.
    NomosCustomer.objects.create(customer_id="cus_first", user=user_1)
    customer = NomosCustomer.objects.create(customer_id="cus_second")
    monkeypatch.setattr("django.db.models.query.QuerySet.exists", lambda self: False)
    assert attach_user(customer, user_1, "test") is False
    customer.refresh_from_db()
    assert customer.user is None and linked_signals == []
