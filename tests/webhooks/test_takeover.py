"""Nothing stuck: an event a dead worker left ``processing`` is visible (admin, with its age)
and taken over after CLAIM_TIMEOUT: by its redelivery, by a delivery of any other event
(``takeover``), or by ``nomos_replay``."""

from __future__ import annotations

import time
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from nomos_billing import takeover
from nomos_billing.models import WebhookEvent
from nomos_billing.sandbox import seed
from nomos_billing.signals import webhook_processed
from nomos_billing.testing import make_event, post_event

EVENTS = reverse("admin:nomos_billing_webhookevent_changelist")
SUB_GET = "GET /subscriptions/{id}"

pytestmark = pytest.mark.django_db


def claimed(age: timedelta, **kwargs: Any) -> WebhookEvent:
    event = make_event("subscription.updated", {"subscription": seed.ALICE_SUBSCRIPTION},
                       **kwargs)
    return WebhookEvent.objects.create(
        event_id=event["id"], topic=event["topic"], payload=event, status="processing",
        attempts=1, claimed_at=timezone.now() - age,
    )


def replay(*args: str) -> str:
    out = StringIO()
    call_command("nomos_replay", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_replay_stuck_takes_over_only_claims_past_the_claim_timeout(nomos):
    stuck = claimed(timedelta(seconds=70))
    working = claimed(timedelta(seconds=10))

    out = replay("--stuck")

    assert f"{stuck.event_id}: stuck in processing for 70 s" in out
    assert "Replayed 1 events: 1 processed" in out
    stuck.refresh_from_db()
    working.refresh_from_db()
    assert (stuck.status, stuck.attempts) == ("processed", 2)
    assert (working.status, working.attempts) == ("processing", 1)
    assert nomos.count(SUB_GET) == 1


def test_replay_failed_includes_stuck_events(nomos):
    stuck = claimed(timedelta(seconds=70))
    failed = WebhookEvent.objects.create(event_id="evt_failed", topic="invoice.paid",
                                         payload={"id": "evt_failed", "topic": "invoice.paid"},
                                         status="failed", attempts=1)

    out = replay("--failed")

    assert "Replayed 2 events: 2 processed" in out
    for event in (stuck, failed):
        event.refresh_from_db()
        assert event.status == "processed"


def test_replay_stuck_with_none_stuck_says_so():
    claimed(timedelta(seconds=10))
    assert "No stuck events." in replay("--stuck")


def test_claim_timeout_follows_the_setting(nomos, client, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "CLAIM_TIMEOUT": 120}
    event = claimed(timedelta(seconds=70))
    payload = event.payload
    assert post_event(client, payload).status_code == 409  # still someone else's
    assert WebhookEvent.objects.get().status == "processing"
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "CLAIM_TIMEOUT": 60}
    assert post_event(client, payload).status_code == 200  # a dead worker's: taken over
    assert WebhookEvent.objects.get().status == "processed"
    assert nomos.count(SUB_GET) == 1


def test_admin_shows_stuck_events_with_their_age(admin_client, no_takeover_look):
    # The admin's own requests would take the stuck one over (after_request): not this test's.
    stuck = claimed(timedelta(seconds=75))
    working = claimed(timedelta(seconds=12))
    done = WebhookEvent.objects.create(event_id="evt_done", topic="invoice.paid",
                                       status="processed")

    page = admin_client.get(EVENTS).content.decode()
    assert "75 s (stuck)" in page
    assert "12 s" in page and "12 s (stuck)" not in page

    filtered = admin_client.get(EVENTS, {"stuck": "yes"}).content.decode()
    assert stuck.event_id in filtered
    assert working.event_id not in filtered and done.event_id not in filtered


def test_admin_process_again_takes_over_a_stuck_event(nomos, admin_client):
    stuck = claimed(timedelta(seconds=75))
    admin_client.post(EVENTS, {"action": "process_again", "_selected_action": [stuck.pk]})
    stuck.refresh_from_db()
    assert stuck.status == "processed"


# -- taken over by the next delivery of any event (takeover.py) -----------------------------------


def other_delivery(client: Any) -> int:
    """Traffic: a delivery of some other event (no Nomos call of its own)."""
    return post_event(client, make_event("invoice.paid", {"invoice": "inv_1"})).status_code


def test_next_delivery_of_another_event_takes_a_stuck_one_over(nomos, client, caplog):
    stuck = claimed(timedelta(seconds=70))

    assert other_delivery(client) == 200

    stuck.refresh_from_db()
    assert (stuck.status, stuck.attempts, stuck.claimed_at) == ("processed", 2, None)
    assert nomos.count(SUB_GET) == 1
    assert f"Took over webhook event {stuck.event_id}" in caplog.text


def test_live_claims_and_failed_events_are_left_to_their_owners(nomos, client):
    working = claimed(timedelta(seconds=10))
    failed = claimed(timedelta(seconds=70))
    WebhookEvent.objects.filter(pk=failed.pk).update(status="failed", claimed_at=None)

    assert other_delivery(client) == 200

    working.refresh_from_db()
    failed.refresh_from_db()
    assert (working.status, working.attempts) == ("processing", 1)
    # A failed event waits for Nomos' redelivery (it had a non-2xx answer) or its retry.
    assert (failed.status, failed.attempts) == ("failed", 1)
    assert nomos.count(SUB_GET) == 0


def test_one_event_per_delivery_and_the_next_delivery_looks_again_at_once(nomos, client):
    first = claimed(timedelta(seconds=90))
    second = claimed(timedelta(seconds=70))

    other_delivery(client)
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == ("processed", "processing")  # the oldest first
    other_delivery(client)
    second.refresh_from_db()
    assert second.status == "processed"
    assert nomos.count(SUB_GET) == 2


def test_a_process_looks_at_most_once_per_quarter_claim_timeout(nomos, client, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("nomos_billing.takeover.time.monotonic", lambda: clock[0])
    other_delivery(client)  # looked, found nothing
    stuck = claimed(timedelta(seconds=70))

    clock[0] += 14.9  # CLAIM_TIMEOUT 60 s: one look per 15 s
    other_delivery(client)
    stuck.refresh_from_db()
    assert stuck.status == "processing"

    clock[0] += 0.2
    other_delivery(client)
    stuck.refresh_from_db()
    assert stuck.status == "processed"


def test_no_takeover_when_the_delivery_used_most_of_its_budget(nomos, client):
    # The delivery's answer must still reach Nomos in time: a takeover needs half the budget
    # (WEBHOOK_BUDGET 20 s) left.
    stuck = claimed(timedelta(seconds=70))
    takeover.after_delivery(time.monotonic() + 9)
    stuck.refresh_from_db()
    assert stuck.status == "processing"
    assert nomos.count(SUB_GET) == 0

    other_delivery(client)  # looks again at once: the last look had found one
    stuck.refresh_from_db()
    assert stuck.status == "processed"


def test_a_rejected_delivery_takes_nothing_over(nomos, client):
    stuck = claimed(timedelta(seconds=70))
    event = make_event("invoice.paid", {"invoice": "inv_1"})
    assert post_event(client, event, secret="whsec_wrong").status_code == 400
    stuck.refresh_from_db()
    assert stuck.status == "processing"


def test_a_failing_takeover_leaves_the_delivery_answered(nomos, client, caplog, connect_receiver):
    stuck = claimed(timedelta(seconds=70))

    def receiver(event: WebhookEvent, **kwargs: Any) -> None:
        if event.event_id == stuck.event_id:
            raise RuntimeError("a bug in the site's receiver")

    connect_receiver(webhook_processed, receiver)
    assert other_delivery(client) == 200
    stuck.refresh_from_db()
    assert (stuck.status, stuck.attempts) == ("failed", 2)
    assert "RuntimeError: a bug in the site's receiver" in stuck.last_error
    assert "Taking over a stuck webhook event failed" in caplog.text


# -- taken over by any other traffic (takeover.after_request) ---------------------------------


def test_any_request_to_the_site_takes_a_stuck_event_over_after_its_answer(nomos, client,
                                                                           caplog):
    stuck = claimed(timedelta(seconds=70))
    response = client.get("/nomos/portal/")  # anonymous: sent to the login page
    assert response.status_code == 302
    stuck.refresh_from_db()
    assert (stuck.status, stuck.attempts) == ("processed", 2)
    assert nomos.count(SUB_GET) == 1
    assert f"Took over webhook event {stuck.event_id}" in caplog.text


def test_a_page_that_is_not_found_is_traffic_too(nomos, client):
    stuck = claimed(timedelta(seconds=70))
    assert client.get("/no-such-page/").status_code == 404
    stuck.refresh_from_db()
    assert stuck.status == "processed"


def test_a_forged_delivery_is_not_traffic(nomos, client):
    stuck = claimed(timedelta(seconds=70))
    response = client.post(reverse("nomos_billing:webhook"), b"{}",
                           content_type="application/json")
    assert response.status_code == 400
    stuck.refresh_from_db()
    assert (stuck.status, nomos.count(SUB_GET)) == ("processing", 0)
