"""Nothing stuck: an event a dead worker left ``processing`` is visible (admin, with its age)
and taken over after CLAIM_TIMEOUT, by the next delivery or by ``nomos_replay``."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from nomos_billing.models import WebhookEvent
from nomos_billing.sandbox import seed
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


def test_admin_shows_stuck_events_with_their_age(admin_client):
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
