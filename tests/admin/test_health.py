"""The operator's health view (admin page) and ``nomos_status [--json]``: what they show, that
they never show the token, and that their query count does not grow with the tables."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from nomos_billing import catchup
from nomos_billing.client import get_client
from nomos_billing.exceptions import NomosUnavailable
from nomos_billing.models import NomosCustomer, NomosSyncState, WebhookEvent
from nomos_billing.sandbox import Fault, seed

pytestmark = pytest.mark.django_db

HEALTH_URL = "/admin/nomos_billing/webhookevent/health/"
Status = WebhookEvent.Status


def status_json() -> dict:
    out = io.StringIO()
    call_command("nomos_status", "--json", stdout=out)
    return json.loads(out.getvalue())


def status_text() -> str:
    out = io.StringIO()
    call_command("nomos_status", stdout=out)
    return out.getvalue()


def make_events(now, **statuses: int) -> None:
    rows = []
    for status, count in statuses.items():
        rows += [WebhookEvent(event_id=f"evt_{status}_{n}", topic="subscription.updated",
                              status=status, deliveries=2, attempts=1,
                              last_error="NomosUnavailable: 503" if status == "failed" else "")
                 for n in range(count)]
    WebhookEvent.objects.bulk_create(rows, batch_size=2000)


def test_empty_install(nomos):
    data = status_json()
    assert data["last_delivery_at"] is None and data["last_delivery_age"] is None
    assert (data["deliveries_24h"], data["failed"], data["stuck"]) == (0, 0, 0)
    assert data["token_cached"] is False and data["task_backend"] is None
    assert data["watermark"] is None and data["breaker"] in (None, "off", "closed")
    assert "Last verified delivery: - (never)" in status_text()


def test_figures_match_the_rows(nomos):
    now = timezone.now()
    make_events(now, processed=5, failed=2, processing=2, received=1)
    # Two events are older than a day; one processing claim is fresh, one stale.
    old = list(WebhookEvent.objects.filter(status="processed").values_list("pk", flat=True)[:2])
    WebhookEvent.objects.filter(pk__in=old).update(received_at=now - timedelta(days=2))
    WebhookEvent.objects.filter(event_id="evt_processing_0").update(
        claimed_at=now - timedelta(hours=1))
    WebhookEvent.objects.filter(event_id="evt_processing_1").update(claimed_at=now)
    customers = [NomosCustomer(customer_id=f"cus_{n}") for n in range(3)]
    NomosCustomer.objects.bulk_create(customers)
    NomosCustomer.objects.filter(customer_id="cus_0").update(
        user=get_user_model().objects.create(username="u0"))
    NomosSyncState.objects.create(name="subscriptions", watermark=now - timedelta(minutes=5),
                                  last_completed_at=now, last_count=42)
    get_client().get_subscription("sub_sandbox_alice")  # fetches and caches a token
    data = status_json()
    assert data["events_24h"] == 8
    assert data["deliveries_24h"] == 16
    assert data["failures_24h"] == 2
    assert (data["failed"], data["stuck"]) == (2, 1)
    assert sorted(e["event_id"] for e in data["problem_events"]) == [
        "evt_failed_0", "evt_failed_1", "evt_processing_0"]
    assert data["unlinked_customers"] == 2
    assert data["catch_up_count"] == 42 and data["watermark"].startswith(str(now.year))
    assert data["token_cached"] is True and 3000 < data["token_expires_in"] <= 3600
    assert data["last_delivery_age"] is not None and data["last_delivery_age"] < 60
    token = nomos.issued_tokens()[-1]
    assert token not in json.dumps(data) and token not in status_text()


def test_admin_page_is_linked_from_the_app_index_and_staff_only(nomos, admin_client, client):
    index = admin_client.get("/admin/nomos_billing/")
    assert HEALTH_URL in index.content.decode()
    make_events(timezone.now(), failed=1)
    page = admin_client.get(HEALTH_URL)
    assert page.status_code == 200
    body = page.content.decode()
    assert "evt_failed_0" in body and "?linked=no" in body and 'value="process_again"' in body
    anonymous = client.get(HEALTH_URL)
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    user = get_user_model().objects.create_user("staff", password="x", is_staff=True)
    client.force_login(user)  # staff without permission on events
    assert client.get(HEALTH_URL).status_code == 403


def test_process_again_from_the_page_processes_the_listed_event(nomos, admin_client):
    from nomos_billing.deliveries import record_event
    from nomos_billing.sandbox import seed
    from nomos_billing.testing import make_event

    event, _ = record_event(make_event("subscription.updated",
                                       {"subscription": seed.ALICE_SUBSCRIPTION}))
    WebhookEvent.objects.filter(pk=event.pk).update(status="failed")
    page = admin_client.get(HEALTH_URL).content.decode()
    assert f'value="{event.pk}" checked' in page
    admin_client.post("/admin/nomos_billing/webhookevent/",
                      {"action": "process_again", "_selected_action": [event.pk]})
    assert WebhookEvent.objects.get(pk=event.pk).status == "processed"


def queries(fn) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        fn()
    return [q["sql"] for q in captured.captured_queries]


@pytest.mark.usefixtures("no_takeover_look")
def test_query_count_does_not_grow_with_100k_events_and_20k_customers(nomos, admin_client):
    admin_client.get(HEALTH_URL)  # session, user and content types warmed up
    empty_page = queries(lambda: admin_client.get(HEALTH_URL))
    empty_status = queries(status_json)
    make_events(timezone.now(), processed=99_000, failed=600, processing=400)
    NomosCustomer.objects.bulk_create(
        [NomosCustomer(customer_id=f"cus_{n}") for n in range(20_000)], batch_size=2000)
    full_page = queries(lambda: admin_client.get(HEALTH_URL))
    full_status = queries(status_json)
    assert len(full_page) == len(empty_page)
    assert len(full_status) == len(empty_status)
    assert status_json()["failed"] == 600


def test_the_outage_breaker_state_shows(nomos, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "BREAKER_FAILURES": 2,
                              "BREAKER_COOLDOWN": 60}
    assert status_json()["breaker"] == "closed"
    nomos.add_fault("POST /admin/magic_link", Fault(status=500), times=None)
    for _ in range(2):
        with pytest.raises(NomosUnavailable):
            get_client().create_magic_link(seed.ALICE)

    assert status_json()["breaker"] == "open"
    assert "Outage breaker: open" in status_text()


def test_long_or_multi_line_texts_are_cut_to_one_line(nomos):
    hostile = "NomosAPIError: sub_" + "x" * 5000 + "\n\x1b[2JFAKE: all fine\r\n"
    WebhookEvent.objects.create(event_id="evt_" + "a" * 60, topic="subscription.updated",
                                status=Status.FAILED, attempts=1, last_error=hostile)
    NomosSyncState.objects.create(name=catchup.STATE_NAME,
                                  last_error="line one\nline two " + "z" * 3000)

    text = status_text()
    data = status_json()

    [line] = [ln for ln in text.splitlines() if "evt_" in ln]
    assert "\x1b" not in text and "\r" not in text
    assert len(line) < 500 and line.endswith("\u2026")
    assert len(data["problem_events"][0]["last_error"]) == 300
    assert data["problem_events"][0]["event_id"] == "evt_" + "a" * 60  # a real id is whole
    assert len(data["catch_up_error"]) == 300 and "\n" not in data["catch_up_error"]


@pytest.mark.skipif("connection.vendor != 'sqlite'",
                    reason="only SQLite stores a value longer than the column")
def test_an_id_longer_than_nomos_sends_is_cut(nomos, admin_client):
    WebhookEvent.objects.create(event_id="evt_" + "b" * 500, topic="t" * 500,
                                status=Status.FAILED, attempts=1)
    data = status_json()
    assert len(data["problem_events"][0]["event_id"]) == 64
    assert len(data["problem_events"][0]["topic"]) == 64
    page = admin_client.get(HEALTH_URL).content.decode()
    assert "b" * 64 not in page and "evt_" + "b" * 59 in page


def test_the_task_queue_shows_when_a_worker_was_last_seen(nomos, admin_client, settings):
    from nomos_billing import workers

    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "nomos"}
    assert status_json()["worker_seen_age"] is None
    assert "no worker seen" in status_text()
    assert "no worker seen" in admin_client.get(HEALTH_URL).content.decode()
    workers.seen("nomos")
    assert status_json()["worker_seen_age"] in (0, 1)
    assert "a worker seen " in status_text()
    page = admin_client.get(HEALTH_URL).content.decode()
    assert "a worker seen " in page and "no worker seen" not in page
