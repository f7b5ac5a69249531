"""``lifecycle``: where "stuck" and "enqueue again" begin, to the microsecond. A claim exactly
``CLAIM_TIMEOUT`` old is still its worker's (the queryset's ``claimed_at__lt`` agrees)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from nomos_billing import lifecycle
from nomos_billing.models import WebhookEvent

TICK = timedelta(microseconds=1)


def claimed(at: Any) -> WebhookEvent:
    return WebhookEvent(event_id="evt_1", topic="subscription.updated", status="processing",
                        claimed_at=at)


def test_a_claim_as_old_as_the_claim_timeout_is_not_stuck_a_tick_older_is() -> None:
    now = timezone.now()
    edge = now - lifecycle.claim_timeout()
    assert not lifecycle.is_stuck(claimed(edge), now)
    assert lifecycle.is_stuck(claimed(edge - TICK), now)


@pytest.mark.parametrize("status", ["received", "processed", "failed", "ignored"])
def test_only_a_processing_claim_is_stuck_however_old(status: str) -> None:
    # As for the queryset (status=processing): an old claimed_at left on a row that is no
    # longer in a worker's hands does not make it stuck, nor does a claim without a time.
    long_ago = timezone.now() - 10 * lifecycle.claim_timeout()
    event = claimed(long_ago)
    event.status = status
    assert not lifecycle.is_stuck(event)
    assert not lifecycle.is_stuck(claimed(None))


@pytest.mark.django_db
def test_the_queryset_draws_the_same_line() -> None:
    now = timezone.now()
    edge = now - lifecycle.claim_timeout()
    claimed(edge).save()
    WebhookEvent.objects.create(event_id="evt_2", topic="subscription.updated",
                                status="processing", claimed_at=edge - TICK)
    stuck = WebhookEvent.objects.stuck(now).values_list("event_id", flat=True)
    assert list(stuck) == ["evt_2"]


def test_a_redelivery_enqueues_again_only_past_the_claim_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = timezone.now()
    monkeypatch.setattr(lifecycle.timezone, "now", lambda: now)
    edge = now - lifecycle.claim_timeout()
    assert not lifecycle.needs_enqueue(claimed(edge))
    assert lifecycle.needs_enqueue(claimed(edge - TICK))
    assert lifecycle.needs_enqueue(claimed(None))
