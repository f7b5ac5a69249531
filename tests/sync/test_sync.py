"""``sync``: Nomos subscription JSON in, ``NomosCustomer``/``NomosSubscription`` rows out."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any

import pytest

from nomos_billing import signals
from nomos_billing.models import NomosCustomer, NomosSubscription
from nomos_billing.sandbox import seed
from nomos_billing.sandbox.shapes import list_subscription
from nomos_billing.sync import refresh_customer, upsert_customer, upsert_from_subscription

pytestmark = pytest.mark.django_db


@pytest.fixture
def status_changes(connect_receiver):
    seen: list[tuple[str, str | None, str]] = []

    def receiver(sender, subscription, previous, status, **kwargs):
        seen.append((subscription.subscription_id, previous, status))

    connect_receiver(signals.subscription_status_changed, receiver)
    return seen


def alice(sandbox) -> dict[str, Any]:
    return copy.deepcopy(sandbox.subscription_view(seed.ALICE_SUBSCRIPTION))


def test_new_subscription_creates_customer_and_subscription(sandbox, status_changes):
    result = upsert_from_subscription(alice(sandbox))
    assert (result.customer_created, result.subscription_created) == (True, True)
    customer, sub = result.customer, result.subscription
    assert (customer.customer_id, customer.email, customer.first_name, customer.last_name) == (
        seed.ALICE, "alice@example.com", "Alice", "Example")
    assert (sub.subscription_id, sub.status, sub.plan, sub.type) == (
        seed.ALICE_SUBSCRIPTION, "active", "pln_sandbox_home", "consumption")
    assert sub.customer == customer
    assert sub.metadata == {"campaign": "sandbox-seed"}
    assert sub.nomos_created_at == datetime(2026, 1, 5, 10, tzinfo=timezone.utc)
    assert sub.start_at is not None and sub.end_at is None
    assert status_changes == [(seed.ALICE_SUBSCRIPTION, None, "active")]


def test_unchanged_status_sends_no_signal_and_change_sends_previous(sandbox, status_changes):
    upsert_from_subscription(alice(sandbox))
    again = upsert_from_subscription(alice(sandbox))
    assert (again.customer_created, again.subscription_created) == (False, False)
    sandbox.set_subscription_status(seed.ALICE_SUBSCRIPTION, "ended")
    upsert_from_subscription(alice(sandbox))
    assert status_changes == [
        (seed.ALICE_SUBSCRIPTION, None, "active"),
        (seed.ALICE_SUBSCRIPTION, "active", "ended"),
    ]
    sub = NomosSubscription.objects.get()
    assert sub.status == "ended" and sub.end_at is not None


def test_customer_changes_at_nomos_are_copied(sandbox):
    upsert_from_subscription(alice(sandbox))
    data = alice(sandbox)
    data["customer"]["email"] = "alice@new.example.com"
    upsert_from_subscription(data)
    assert NomosCustomer.objects.get().email == "alice@new.example.com"


def test_an_older_read_does_not_overwrite_a_newer_one(sandbox, status_changes):
    old = alice(sandbox)
    sandbox.set_subscription_status(seed.ALICE_SUBSCRIPTION, "ended")
    new = alice(sandbox)
    new["updated_at"] = "2030-01-01T00:00:00.000Z"
    upsert_from_subscription(new)
    upsert_from_subscription(old)
    assert NomosSubscription.objects.get().status == "ended"
    assert status_changes == [(seed.ALICE_SUBSCRIPTION, None, "ended")]


def test_list_item_with_known_customer_id_does_not_fetch_the_customer(nomos):
    upsert_customer(nomos.customers[seed.ACME])
    item = list_subscription(nomos.subscriptions[seed.ACME_FEED_IN])
    assert item["customer"] == seed.ACME
    result = upsert_from_subscription(item)
    assert result.customer.customer_id == seed.ACME and not result.customer_created
    assert nomos.count("GET /customers/{id}") == 0


def test_list_item_with_unknown_customer_id_fetches_it_once(nomos):
    for sub_id in (seed.ACME_CONSUMPTION, seed.ACME_FEED_IN):
        upsert_from_subscription(list_subscription(nomos.subscriptions[sub_id]))
    assert nomos.count("GET /customers/{id}") == 1
    customer = NomosCustomer.objects.get()
    assert (customer.type, customer.company_name) == ("company", "Acme Energie GmbH")
    assert customer.subscriptions.count() == 2


def test_lead_id_is_kept_and_never_blanked(sandbox):
    result = upsert_from_subscription(alice(sandbox), lead_id="lead_1")
    assert result.subscription.lead_id == "lead_1"
    upsert_from_subscription(alice(sandbox))
    assert NomosSubscription.objects.get().lead_id == "lead_1"


def test_nulls_unknown_values_and_long_strings_are_stored_safely(sandbox):
    data = alice(sandbox)
    data.update({"number": None, "metadata": None, "status": "paused", "type": "hydrogen",
                 "plan": "p" * 100, "start_at": "not a date"})
    data["customer"].update({"first_name": "F" * 300, "type": "alien", "email": None})
    result = upsert_from_subscription(data)
    sub, customer = result.subscription, result.customer
    # A status Nomos added after this code was written is kept as sent, not blanked.
    assert (sub.number, sub.metadata, sub.status, sub.type, sub.start_at) == (
        "", {}, "paused", "", None)
    assert len(sub.plan) == 64
    assert (len(customer.first_name), customer.type, customer.email) == (100, "person", "")
    assert NomosCustomer.objects.get().latest_status == "paused"


def test_an_unknown_status_is_stored_as_sent_and_announces_no_change(sandbox, status_changes):
    upsert_from_subscription(alice(sandbox))
    data = alice(sandbox)
    data.update({"status": "suspended_pending_grid_operator_review", "updated_at":
                 "2030-01-01T00:00:00.000Z"})
    upsert_from_subscription(data)
    sub = NomosSubscription.objects.get()
    assert sub.status == "suspended_pending_grid_operator_review"
    assert sub.get_status_display() == "suspended_pending_grid_operator_review"
    assert NomosCustomer.objects.get().latest_status == sub.status
    # Receivers heard of the known status only; the unknown one changed nothing for them.
    assert status_changes == [(seed.ALICE_SUBSCRIPTION, None, "active")]
    # Back to a status they know: announced, with what was stored before.
    data.update({"status": "ended", "updated_at": "2030-01-02T00:00:00.000Z"})
    upsert_from_subscription(data)
    assert status_changes[-1] == (
        seed.ALICE_SUBSCRIPTION, "suspended_pending_grid_operator_review", "ended")


def test_a_status_longer_than_the_column_is_cut_to_it(sandbox):
    data = alice(sandbox)
    data["status"] = "x" * 100
    upsert_from_subscription(data)
    assert NomosSubscription.objects.get().status == "x" * 64


def test_a_status_that_is_not_a_string_is_stored_empty(sandbox, status_changes):
    data = alice(sandbox)
    data["status"] = {"nested": "active"}
    upsert_from_subscription(data)
    assert NomosSubscription.objects.get().status == ""
    assert status_changes == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"customer": {"id": "cus_1"}}, "subscription object without id"),
        ({"id": "sub_1"}, "without customer"),
        ({"id": "sub_1", "customer": 42}, "without customer"),
        ({"id": "sub_1", "customer": {"email": "x@example.com"}}, "customer object without id"),
    ],
)
def test_objects_without_ids_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        upsert_from_subscription(data)
    assert not NomosSubscription.objects.exists()


def test_refresh_customer_reads_customer_and_all_its_subscriptions(nomos):
    customer = NomosCustomer.objects.create(customer_id=seed.ACME, email="old@example.com")
    nomos.customers[seed.ACME]["email"] = "new@acme.example.com"
    assert refresh_customer(customer) == 2
    customer.refresh_from_db()
    assert customer.email == "new@acme.example.com"
    assert set(customer.subscriptions.values_list("subscription_id", flat=True)) == {
        seed.ACME_CONSUMPTION, seed.ACME_FEED_IN}
    assert nomos.count("GET /customers/{id}") == 1


def test_refresh_customer_without_subscriptions_can_link_by_email(nomos, settings,
                                                                  django_user_model):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "LINK_BY_EMAIL": True}
    carol = django_user_model.objects.create(username="carol", email="CAROL@example.com")
    customer = NomosCustomer.objects.create(customer_id=seed.CAROL)
    assert refresh_customer(customer) == 0
    customer.refresh_from_db()
    assert (customer.user, customer.linked_by) == (carol, "by_email")
