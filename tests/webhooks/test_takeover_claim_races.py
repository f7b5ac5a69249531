"""Two workers and a clock: a worker whose claim went stale and was taken over records nothing.

Worker A claims an event and is slow; the clock passes CLAIM_TIMEOUT; worker B takes the claim
over (a redelivery, ``nomos_replay --stuck``, a watchdog, the webhook view's sweep) or the
sweep puts it back in the queue. Whatever A then ends with (processed, an outage, an invalid
event, a crash), the row stays as B left it: status, ``claimed_at``, attempts, outcome and
error. On SQLite and on PostgreSQL (the PostgreSQL run of the suite).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

import pytest
from django.utils import timezone

from nomos_billing import deliveries, lifecycle, processing, takeover
from nomos_billing.exceptions import InvalidEvent, NomosUnavailable
from nomos_billing.models import WebhookEvent
from nomos_billing.signals import webhook_processed

pytestmark = pytest.mark.django_db

TOPIC = "race.test"
ROW = ("status", "claimed_at", "attempts", "last_error", "processed_at", "updated_at")


class Clock:
    """``django.utils.timezone.now`` under the test's hand (the claim, ``finish``, auto_now)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 5, 27, 12, 0, tzinfo=dt_timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(timezone, "now", clock)
    return clock


def row(pk: int) -> tuple[Any, ...]:
    return tuple(WebhookEvent.objects.filter(pk=pk).values_list(*ROW).get())


def outage() -> str:
    raise NomosUnavailable("Nomos is down", retry_after=30)


def invalid() -> str:
    raise InvalidEvent("nothing to sync")


def crash() -> str:
    raise RuntimeError("a bug in a handler")


#: What worker A ends with once B has the event.
LATE_OUTCOMES: dict[str, Callable[[], str]] = {
    "processed": lambda: "processed",
    "outage": outage,
    "invalid": invalid,
    "crash": crash,
}


def b_holds(event: WebhookEvent) -> None:
    """B took the stale claim over and is still working."""
    assert WebhookEvent.objects.claim(WebhookEvent.objects.get(pk=event.pk), takeover=True)


def b_finished(event: WebhookEvent) -> None:
    """B took the claim over and recorded its outcome."""
    result = processing.process_event(WebhookEvent.objects.get(pk=event.pk), takeover=True)
    assert result.claimed and result.status == "processed"


def b_requeued(event: WebhookEvent) -> None:
    """The webhook view's sweep (a task backend) put the stuck event back in the queue."""
    assert takeover._requeue() is False
    assert WebhookEvent.objects.get(pk=event.pk).status == "received"


MEANWHILE: dict[str, Callable[[WebhookEvent], None]] = {
    "taken over, B still working": b_holds,
    "taken over, B finished": b_finished,
    "put back in the queue": b_requeued,
}


@pytest.fixture
def race(monkeypatch, clock) -> Iterator[dict[str, Any]]:
    """A handler for ``race.*``: A's first call lets the clock pass CLAIM_TIMEOUT and B act,
    then ends as ``state["late"]``; later calls (B's) process at once."""
    state: dict[str, Any] = {"calls": 0, "late": None, "meanwhile": None, "after_b": None}

    def handler(event: WebhookEvent) -> str:
        state["calls"] += 1
        if state["calls"] > 1:
            return "processed"
        clock.advance(lifecycle.claim_timeout().total_seconds() + 1)
        state["meanwhile"](event)
        state["after_b"] = row(event.pk)
        clock.advance(5)
        return state["late"]()

    monkeypatch.setitem(processing.HANDLERS, "race", handler)
    yield state


def new_event() -> WebhookEvent:
    return WebhookEvent.objects.create(
        event_id="evt_race", topic=TOPIC, payload={"id": "evt_race", "topic": TOPIC}
    )


def run_a(entry: str) -> processing.Result:
    """Worker A: through a claim of a stored event (replay, a task worker, a redelivery), or
    as the delivery that recorded the event already claimed (the webhook view, inline)."""
    if entry == "claim":
        return processing.process_event(new_event())
    event, created = deliveries.record_delivery({"id": "evt_race", "topic": TOPIC})
    assert created and event.status == "processing"
    return processing.process_event(event, claimed=True)


@pytest.mark.parametrize("entry", ["claim", "record_delivery"])
@pytest.mark.parametrize("meanwhile", MEANWHILE)
@pytest.mark.parametrize("late", LATE_OUTCOMES)
def test_a_worker_that_lost_its_claim_records_nothing(race, entry, meanwhile, late, monkeypatch):
    if meanwhile == "put back in the queue":
        monkeypatch.setattr("nomos_billing.tasks.enqueue", lambda event_id, **kw: None)
    race["meanwhile"], race["late"] = MEANWHILE[meanwhile], LATE_OUTCOMES[late]

    if late == "crash":
        with pytest.raises(RuntimeError):
            run_a(entry)
        result = None
    else:
        result = run_a(entry)

    stored = WebhookEvent.objects.get()
    assert row(stored.pk) == race["after_b"]
    if result is not None:
        # Not A's outcome: no retry planned by A, the event as B left it.
        assert (result.claimed, result.retry) == (False, False)
        assert result.status == race["after_b"][0]


def test_a_late_worker_sends_no_webhook_processed(race, connect_receiver):
    seen: list[str] = []

    def receiver(sender: Any, event: WebhookEvent, **kwargs: Any) -> None:
        seen.append(event.status)

    connect_receiver(webhook_processed, receiver, sender=WebhookEvent)
    race["meanwhile"], race["late"] = b_finished, LATE_OUTCOMES["processed"]
    processing.process_event(new_event())
    # B's processing announced the event once; A, finishing late, did not again.
    assert seen == ["processed"]


def test_a_late_task_worker_plans_no_retry(race, monkeypatch):
    from nomos_billing import tasks

    queued: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(tasks, "enqueue", lambda event_id, **kw: queued.append((event_id, kw)))
    monkeypatch.setattr(tasks, "get_backend", lambda: type("B", (), {"supports_defer": True})())
    race["meanwhile"], race["late"] = b_holds, outage
    new_event()

    assert tasks._run("evt_race") == "busy"

    # Only A's own watchdog (queued when it claimed); no retry: B holds the event.
    assert [kw.get("takeover") for _, kw in queued] == [True]
    assert WebhookEvent.objects.get().status == "processing"


def test_the_holder_still_records_its_outcome(clock, monkeypatch):
    """The other side: a slow worker that keeps its claim (nobody took it over) records its
    outcome, however long it took."""
    def slow(event: WebhookEvent) -> str:
        clock.advance(lifecycle.claim_timeout().total_seconds() * 3)
        return "processed"

    monkeypatch.setitem(processing.HANDLERS, "race", slow)
    result = processing.process_event(new_event())
    stored = WebhookEvent.objects.get()
    assert result.claimed
    assert (stored.status, stored.claimed_at, stored.attempts) == ("processed", None, 1)


def test_a_claim_takeover_needs_the_claim_to_be_stale(clock, monkeypatch):
    event = new_event()
    assert WebhookEvent.objects.claim(event)
    clock.advance(lifecycle.claim_timeout().total_seconds() - 1)
    assert not WebhookEvent.objects.claim(WebhookEvent.objects.get(), takeover=True)
    clock.advance(2)
    assert WebhookEvent.objects.claim(WebhookEvent.objects.get(), takeover=True)
    assert WebhookEvent.objects.get().attempts == 2
