"""What the webhook's write path costs in SQL statements, pinned (``CaptureQueriesContext``).

Run in autocommit (``transaction=True``), as a site runs them, on SQLite and PostgreSQL alike.
Transaction control (BEGIN/COMMIT/SAVEPOINT) is counted apart from the statements that read or
write rows, as the performance goals do. The fetch from Nomos is not a statement.
"""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from nomos_billing import deliveries, processing, signals, takeover
from nomos_billing.linking import user_reference
from nomos_billing.models import NomosCustomer, NomosSubscription, WebhookEvent
from nomos_billing.testing import make_event, post_event

pytestmark = pytest.mark.django_db(transaction=True)

CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")
EVENTS = WebhookEvent._meta.db_table
CUSTOMERS = NomosCustomer._meta.db_table
SUBSCRIPTIONS = NomosSubscription._meta.db_table


class Counted:
    def __init__(self, capture: CaptureQueriesContext) -> None:
        sql = [q["sql"] for q in capture.captured_queries]
        self.statements = [s for s in sql if not s.upper().startswith(CONTROL)]
        self.transactions = sum(1 for s in sql if s.upper().startswith("BEGIN"))

    def kinds(self) -> list[str]:
        """``"INSERT <table>"`` etc., one per statement."""
        return [f"{s.split()[0].upper()} {_table(s)}" for s in self.statements]

    def writes_to(self, table: str) -> list[str]:
        """INSERT/UPDATE/DELETE statements whose target (not a subquery's) is ``table``."""
        return [s for s in self.statements
                if s.split()[0].upper() in ("INSERT", "UPDATE", "DELETE")
                and s.split('"')[1:2] == [table]]


def _table(sql: str) -> str:
    for table in (EVENTS, CUSTOMERS, SUBSCRIPTIONS):
        if f'"{table}"' in sql.split(" WHERE ")[0]:
            return table
    return "other"


@pytest.fixture(autouse=True)
def _looked_for_stuck_events_lately(monkeypatch: pytest.MonkeyPatch) -> None:
    # The look for stuck events (takeover.py) is one per process every quarter CLAIM_TIMEOUT,
    # not one per delivery; its own cost is pinned below.
    monkeypatch.setattr(takeover, "_next_look", float("inf"))


def test_a_look_for_stuck_events_is_one_select(client, monkeypatch):
    monkeypatch.setattr(takeover, "_next_look", 0.0)
    response, counted = deliver(client, make_event("test.event"))
    assert response.status_code == 200
    assert counted.kinds() == [f"INSERT {EVENTS}", f"SELECT {EVENTS}"]
    # The next delivery of this process does not look again.
    assert deliver(client, make_event("test.event"))[1].kinds() == [f"INSERT {EVENTS}"]


def deliver(client: Any, event: dict[str, Any]) -> tuple[Any, Counted]:
    with CaptureQueriesContext(connection) as capture:
        response = post_event(client, event)
    return response, Counted(capture)


@pytest.fixture
def linked_subscription(nomos):
    """A subscription at Nomos, new to us, whose metadata names a site user."""
    user = get_user_model().objects.create_user("ann", "ann@example.com", "pw")
    customer = nomos.add_customer(email="ann@example.com", first_name="Ann", last_name="Lee")
    sub = nomos.add_subscription(customer["id"], metadata={"django_user_id": user_reference(user)})
    return SimpleNamespace(user=user, customer=customer, sub=sub)


@pytest.mark.parametrize(("topic", "answer", "status"), [
    ("test.event", b"processed\n", "processed"),
    ("plan.created", b"ignored: no handler for this topic\n", "ignored"),
])
def test_new_event_that_needs_no_work_is_one_insert(client, topic, answer, status):
    response, counted = deliver(client, make_event(topic))
    assert (response.status_code, response.content) == (200, answer)
    # Recorded already finished: goal <= 4.
    assert counted.kinds() == [f"INSERT {EVENTS}"]
    assert counted.transactions == 0
    event = WebhookEvent.objects.get()
    assert (event.status, event.attempts, event.deliveries) == (status, 1, 1)
    assert event.claimed_at is None and event.processed_at is not None


def test_new_event_that_needs_processing_is_one_insert_and_one_update(client, monkeypatch):
    monkeypatch.setitem(processing.HANDLERS, "test.event", lambda event: "processed")
    response, counted = deliver(client, make_event("test.event"))
    assert (response.status_code, response.content) == (200, b"processed\n")
    # Recorded already claimed, then finished.
    assert counted.kinds() == [f"INSERT {EVENTS}", f"UPDATE {EVENTS}"]
    assert counted.transactions == 0
    event = WebhookEvent.objects.get()
    assert (event.status, event.attempts, event.deliveries) == ("processed", 1, 1)
    assert event.claimed_at is None and event.processed_at is not None


def test_site_receivers_get_the_finished_event_inside_one_transaction(client, connect_receiver):
    seen: list[tuple[str, int, bool]] = []

    def receiver(event: WebhookEvent, **kwargs: Any) -> None:
        seen.append((event.status, event.attempts, connection.in_atomic_block))

    connect_receiver(signals.webhook_processed, receiver)
    response, counted = deliver(client, make_event("invoice.paid"))
    assert response.status_code == 200
    assert seen == [("processed", 1, True)]
    assert len(counted.statements) == 2
    assert counted.transactions == 1


def test_new_subscription_event_is_at_most_eight_statements_besides_the_fetch(
    client, nomos, linked_subscription
):
    event = make_event("subscription.created", {"subscription": linked_subscription.sub["id"]})
    response, counted = deliver(client, event)
    assert response.status_code == 200
    assert nomos.count("GET /subscriptions/{id}") == 1
    assert len(counted.statements) <= 8, counted.kinds()
    # Only the resolvers' link (check, then conditional UPDATE) is a transaction of its own.
    assert counted.transactions <= 1
    customer = NomosCustomer.objects.get()
    assert customer.user == linked_subscription.user
    assert NomosSubscription.objects.get().customer == customer


def test_duplicate_of_a_finished_event_is_one_statement(client, nomos, linked_subscription):
    event = make_event("subscription.created", {"subscription": linked_subscription.sub["id"]})
    post_event(client, event)
    nomos.reset_counts()
    response, counted = deliver(client, event)
    assert (response.status_code, response.content) == (200, b"already processed\n")
    assert len(counted.statements) == 1 and counted.transactions == 0
    assert WebhookEvent.objects.get().deliveries == 2
    assert nomos.calls.total() == 0


def test_an_update_that_changes_nothing_writes_no_customer_or_subscription_row(
    client, nomos, linked_subscription
):
    sub_id = linked_subscription.sub["id"]
    post_event(client, make_event("subscription.created", {"subscription": sub_id}))
    before = NomosSubscription.objects.get().updated_at, NomosCustomer.objects.get().updated_at
    updated = make_event("subscription.updated", {"subscription": sub_id})
    response, counted = deliver(client, updated)
    assert response.status_code == 200
    assert counted.writes_to(SUBSCRIPTIONS) == counted.writes_to(CUSTOMERS) == []
    after = NomosSubscription.objects.get().updated_at, NomosCustomer.objects.get().updated_at
    assert after == before


def test_a_changed_subscription_updates_only_the_changed_columns(
    client, nomos, linked_subscription, connect_receiver
):
    sub_id = linked_subscription.sub["id"]
    post_event(client, make_event("subscription.created", {"subscription": sub_id}))
    nomos.set_subscription_status(sub_id, "active")
    changes: list[tuple[str | None, str]] = []

    def receiver(previous: str | None, status: str, **kwargs: Any) -> None:
        changes.append((previous, status))

    connect_receiver(signals.subscription_status_changed, receiver)
    response, counted = deliver(
        client, make_event("subscription.updated", {"subscription": sub_id})
    )
    assert response.status_code == 200
    [update] = counted.writes_to(SUBSCRIPTIONS)
    assigned = update.split(" SET ")[1].split(" WHERE ")[0]
    assert '"status"' in assigned and '"metadata"' not in assigned and '"plan"' not in assigned
    # ... and the customer's latest status, in one more statement.
    [customer_update] = counted.writes_to(CUSTOMERS)
    assert customer_update.split(" SET ")[1].startswith('"latest_status" = ')
    assert changes == [("pending", "active")]
    assert NomosSubscription.objects.get().status == "active"
    assert NomosCustomer.objects.get().latest_status == "active"


def test_other_databases_record_deliveries_through_the_orm(monkeypatch):
    event = make_event("subscription.created", {"subscription": "sub_1"})
    # Any vendor without INSERT ... ON CONFLICT ... RETURNING takes get_or_create.
    monkeypatch.setattr(connection, "vendor", "other")
    first, created = deliveries.record_delivery(event)
    again, created_again = deliveries.record_delivery(event)
    monkeypatch.undo()
    assert (created, created_again) == (True, False)
    assert (first.status, first.attempts) == ("processing", 1)
    assert again.deliveries == 2
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.attempts, stored.deliveries) == ("processing", 1, 2)


# -- nomos_sync ---------------------------------------------------------------------------------


def _seed_customers(nomos: Any, count: int) -> None:
    for n in range(count):
        customer = nomos.add_customer(f"sync{n}@example.com", id=f"cus_sync_{n:04d}")
        nomos.add_subscription(customer["id"], status="active")
    nomos.reset_counts()


def _sync() -> Counted:
    with CaptureQueriesContext(connection) as capture:
        call_command("nomos_sync", stdout=io.StringIO())
    return Counted(capture)


def test_first_sync_fetches_customers_by_page_in_a_few_statements_per_page(nomos):
    _seed_customers(nomos, 150)
    subscriptions = 150 + 3  # and the sandbox seed's 3

    counted = _sync()

    assert NomosSubscription.objects.count() == subscriptions
    assert NomosCustomer.objects.filter(email__startswith="sync").count() == 150
    # Two pages of subscriptions, two of customers; no customer fetched one by one.
    assert nomos.count("GET /subscriptions") == 2
    assert nomos.count("GET /customers") == 2
    assert nomos.count("GET /customers/{id}") == 0
    # Per page: customers SELECT + INSERT, subscriptions SELECT + INSERT; goal <= 4 per item.
    assert len(counted.statements) <= 16, counted.kinds()


def test_a_sync_with_a_few_new_customers_fetches_just_those(nomos):
    _seed_customers(nomos, 150)
    _sync()
    for n in range(3):
        customer = nomos.add_customer(f"late{n}@example.com")
        nomos.add_subscription(customer["id"])
    nomos.reset_counts()

    _sync()

    assert nomos.count("GET /customers/{id}") == 3
    assert nomos.count("GET /customers") == 0
    assert NomosCustomer.objects.filter(email__startswith="late").count() == 3


def test_a_re_sync_with_nothing_changed_writes_nothing(nomos):
    _seed_customers(nomos, 120)
    _sync()
    nomos.reset_counts()

    counted = _sync()

    writes = [s for s in counted.statements
              if s.split()[0].upper() in ("INSERT", "UPDATE", "DELETE")]
    assert writes == []
    assert nomos.count("GET /customers") + nomos.count("GET /customers/{id}") == 0
    # Two SELECTs per page, one for our leads no subscription names yet (none here: no
    # GET /leads), one count at the end.
    assert len(counted.statements) <= 2 * 2 + 1 + 1
    assert nomos.count("GET /leads/{id}") == 0


def test_a_re_sync_writes_the_one_change(nomos):
    _seed_customers(nomos, 5)
    _sync()
    sub = NomosSubscription.objects.filter(customer__email="sync3@example.com").get()
    nomos.set_subscription_status(sub.subscription_id, "ended")

    counted = _sync()

    [update] = counted.writes_to(SUBSCRIPTIONS)
    assert update.split()[0].upper() == "UPDATE"
    [customer_update] = counted.writes_to(CUSTOMERS)
    assert customer_update.split(" SET ")[1].startswith('"latest_status" = ')
    sub.refresh_from_db()
    assert sub.status == "ended"
    assert sub.customer.latest_status == "ended"
    active = NomosCustomer.objects.filter(email__startswith="sync", latest_status="active")
    assert active.count() == 4
