"""Counts that stay cheap at any size (``counts``): the admin's lists and the health page count
up to a bound ("more than 10,000") or take PostgreSQL's estimate for a whole table ("about
1,000,000 ... (an estimate)"), say which, cost the same queries at any size, and "select all"
still means every matching row."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from nomos_billing import counts
from nomos_billing.models import NomosCustomer, WebhookEvent

EVENTS = reverse("admin:nomos_billing_webhookevent_changelist")
CUSTOMERS = reverse("admin:nomos_billing_nomoscustomer_changelist")
HEALTH = reverse("admin:nomos_billing_health")
BOUND = 5


@pytest.fixture(autouse=True)
def small_bound(monkeypatch: Any) -> None:
    monkeypatch.setattr(counts, "BOUND", BOUND)


def events(n: int, status: str = "processed", start: int = 0) -> None:
    WebhookEvent.objects.bulk_create(
        [WebhookEvent(event_id=f"evt_{status}_{i}", topic="test.event", status=status,
                      payload={"id": f"evt_{status}_{i}", "topic": "test.event"})
         for i in range(start, start + n)])


def pagination(response: Any) -> str:
    text = response.content.decode()
    start = text.index('<nav class="paginator"')
    return " ".join(text[start:text.index("</nav>", start)].split())


@pytest.mark.django_db
def test_a_count_under_the_bound_is_exact(admin_client: Any) -> None:
    events(3, "failed")
    response = admin_client.get(EVENTS, {"status__exact": "failed"})
    assert "3 webhook events" in pagination(response)
    assert "more than" not in pagination(response)


@pytest.mark.django_db
def test_a_filtered_count_stops_at_the_bound_and_says_so(admin_client: Any) -> None:
    events(BOUND + 2, "failed")
    response = admin_client.get(EVENTS, {"status__exact": "failed"})
    assert f"more than {BOUND} webhook events" in pagination(response)
    # "Select all" does not pretend to know the number either.
    assert f"Select all webhook events (more than {BOUND})" in response.content.decode()


@pytest.mark.usefixtures("no_takeover_look")
@pytest.mark.django_db
def test_the_queries_of_a_list_do_not_grow_past_the_bound(admin_client: Any) -> None:
    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert admin_client.get(EVENTS, {"status__exact": "failed"}).status_code == 200
        return len(ctx)

    events(2, "failed")
    small = queries()
    events(50, "failed", start=2)
    assert queries() == small


@pytest.mark.django_db
def test_select_all_acts_on_every_matching_row_beyond_the_bound(admin_client: Any) -> None:
    events(BOUND + 3, "failed")
    events(2, "processed")
    response = admin_client.post(
        EVENTS + "?status__exact=failed",
        {"action": "process_again", "select_across": "1", "index": "0",
         "_selected_action": [str(WebhookEvent.objects.filter(status="failed").first().pk)]},
    )
    assert response.status_code == 302
    assert not WebhookEvent.objects.filter(status="failed").exists()
    assert WebhookEvent.objects.filter(status="processed", attempts=1).count() == BOUND + 3


@pytest.mark.django_db
def test_the_health_page_bounds_its_counts_and_says_so(admin_client: Any) -> None:
    events(BOUND + 1, "failed")
    NomosCustomer.objects.create(customer_id="cus_1")

    page = " ".join(admin_client.get(HEALTH).content.decode().split())
    out = io.StringIO()
    call_command("nomos_status", "--json", stdout=out)
    data = json.loads(out.getvalue())
    text = io.StringIO()
    call_command("nomos_status", stdout=text)

    assert f"more than {BOUND}</a>" in page  # failed events
    assert (f"at least {BOUND + 1} deliveries of more than {BOUND} events, "
            f"at least {BOUND + 1} failed") in page
    assert (data["failed"], data["unlinked_customers"]) == (BOUND, 1)
    assert sorted(data["more"]) == ["events_24h", "failed"]
    assert sorted(data["at_least"]) == ["deliveries_24h", "failures_24h"]
    assert f"Failed events: more than {BOUND}; stuck in processing: 0" in text.getvalue()


@pytest.mark.usefixtures("no_takeover_look")
@pytest.mark.django_db
def test_the_health_page_costs_the_same_queries_at_any_size(admin_client: Any) -> None:
    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert admin_client.get(HEALTH).status_code == 200
        return len(ctx)

    events(1, "failed")
    small = queries()
    events(30, "failed", start=1)
    assert queries() == small


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                    reason="the estimate is PostgreSQL's (pg_class.reltuples); set DATABASE_URL")
@pytest.mark.django_db(transaction=True)
def test_the_whole_table_is_an_estimate_said_to_be_one(admin_client: Any) -> None:
    events(BOUND + 20)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE nomos_billing_webhookevent")
    # A table this small is read whole by ANALYZE: the estimate is the number.
    response = admin_client.get(EVENTS)

    assert f"about {BOUND + 20} webhook events (an estimate)" in pagination(response)
    # A filter is counted, not estimated.
    assert "more than" in pagination(admin_client.get(EVENTS, {"topic": "test.event"}))
