"""A 202 only while a task worker is alive (``workers``): otherwise the view does the worker's job.

In process, on the dummy backend (it keeps jobs until the test plays the worker); real workers,
killed and restarted: ``test_tasks_workers.py::test_a_delivery_after_the_worker_died_*``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from nomos_billing import tasks, workers
from nomos_billing.checks import check_settings
from nomos_billing.conf import nomos_settings
from nomos_billing.models import WebhookEvent
from nomos_billing.testing import make_event, post_event
from tests.tasks.test_tasks import DUMMY, IMMEDIATE, SUB_GET, alice_event, jobs, work

pytestmark = pytest.mark.django_db

HANDOFF = 0.3


@pytest.fixture
def queued(nomos, settings):
    """TASK_BACKEND on a dummy backend with the handoff check on (no worker runs unless the
    test plays one)."""
    settings.TASKS = {"default": IMMEDIATE, "nomos": DUMMY}
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "nomos",
                              "WORKER_HANDOFF_TIMEOUT": HANDOFF}
    backend = tasks.task_backends["nomos"]
    backend.clear()
    yield backend
    backend.clear()


class Clock:
    """The view's clock while it watches the event's row: pauses recorded, not slept."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.pauses: list[float] = []
        self.during: Any = None  # what happens while the view pauses (a worker polls)

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds
        if self.during is not None:
            self.during(len(self.pauses))


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("nomos_billing.workers.monotonic", fake.monotonic)
    monkeypatch.setattr("nomos_billing.workers.sleep", fake.sleep)
    return fake


def no_worker_errors(caplog: Any) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "nomos_billing.workers" and r.levelname == "ERROR"]


def test_with_no_worker_alive_the_view_processes_the_event_itself(queued, nomos, client, caplog):
    event = alice_event()
    response = post_event(client, event)
    # Not 202: nothing would process it, and Nomos does not redeliver after a 2xx.
    assert (response.status_code, response.content) == (200, b"processed\n")
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.attempts) == ("processed", 1)
    assert nomos.count(SUB_GET) == 1
    [line] = no_worker_errors(caplog)
    assert line.startswith(
        f"No task worker of NOMOS_BILLING['TASK_BACKEND'] = 'nomos' took webhook event "
        f"{event['id']} within 0.3 s (WORKER_HANDOFF_TIMEOUT), so this web process processed "
        "it: start a worker")
    assert "db_worker" in line
    # Once per cool-down, not per delivery.
    assert post_event(client, alice_event()).status_code == 200
    assert len(no_worker_errors(caplog)) == 1
    # When a worker comes back, the jobs left in the queue find their events done.
    assert work(queued) == ["busy", "busy"]
    assert nomos.count(SUB_GET) == 2


def test_a_worker_seen_lately_gets_the_event_at_once(queued, nomos, client, clock, caplog):
    workers.seen("nomos")
    response = post_event(client, alice_event())
    assert (response.status_code, response.content) == (202, b"queued\n")
    assert clock.pauses == []  # no look at the row: the stamp says a worker is at work
    assert (WebhookEvent.objects.get().status, nomos.count(SUB_GET)) == ("received", 0)
    assert no_worker_errors(caplog) == []


def test_a_job_vouches_for_the_worker_that_runs_it(queued, nomos, client, clock):
    # No worker seen: the view waits, then processes the event itself.
    assert post_event(client, alice_event()).status_code == 200
    waited = len(clock.pauses)
    assert waited
    # A worker comes up and runs the job left in the queue: that stamps it alive, so the next
    # delivery is handed over at once.
    assert work(queued) == ["busy"]
    response = post_event(client, alice_event())
    assert (response.status_code, response.content) == (202, b"queued\n")
    assert len(clock.pauses) == waited


def test_a_worker_that_takes_the_event_while_the_view_waits_gets_it(queued, nomos, client,
                                                                     clock, caplog):
    def worker_polls(pause: int) -> None:
        # An idle worker takes the job on the view's third pause. Its stamp would be another
        # process's: removed, so that the view sees the claim on the row.
        if pause == 3:
            assert work(queued) == ["processed"]
            workers.token_cache().delete(workers._key("nomos"))

    clock.during = worker_polls
    response = post_event(client, alice_event())
    assert response.status_code == 202
    assert len(clock.pauses) == 3 and sum(clock.pauses) < HANDOFF
    assert (WebhookEvent.objects.get().status, nomos.count(SUB_GET)) == ("processed", 1)
    assert no_worker_errors(caplog) == []


def test_the_wait_is_bounded_by_the_handoff_timeout(queued, nomos, client, clock):
    assert post_event(client, alice_event()).status_code == 200
    assert clock.pauses and abs(sum(clock.pauses) - HANDOFF) < 1e-9
    assert all(0 < p <= workers.POLL_LONGEST for p in clock.pauses)


def test_a_redelivery_of_an_event_waiting_in_a_dead_queue_is_processed_here(
        queued, nomos, client, settings, clock):
    event = alice_event()
    workers.seen("nomos")
    assert post_event(client, event).status_code == 202
    workers.token_cache().delete(workers._key("nomos"))  # the worker died since
    response = post_event(client, event)
    assert response.status_code == 200
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.deliveries, nomos.count(SUB_GET)) == ("processed", 2, 1)
    assert len(jobs(queued)) == 1  # not queued a second time


def test_zero_trusts_the_queue(queued, nomos, client, settings, clock):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "WORKER_HANDOFF_TIMEOUT": 0}
    assert post_event(client, alice_event()).status_code == 202
    assert (clock.pauses, nomos.count(SUB_GET)) == ([], 0)


def test_a_backend_that_runs_the_job_at_once_is_a_live_worker(nomos, client, settings, clock):
    settings.TASKS = {"default": IMMEDIATE}
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "default"}
    assert post_event(client, alice_event()).status_code == 202
    assert clock.pauses == []
    assert (WebhookEvent.objects.get().status, nomos.count(SUB_GET)) == ("processed", 1)


# -- the takeover, when the queue's worker is gone -------------------------------------------


def waiting_in_the_queue(age: timedelta, status: str = "received") -> dict[str, Any]:
    event = alice_event()
    WebhookEvent.objects.create(
        event_id=event["id"], topic=event["topic"], payload=event, status=status,
        claimed_at=timezone.now() - age if status == "processing" else None)
    WebhookEvent.objects.filter(event_id=event["id"]).update(updated_at=timezone.now() - age)
    return event


@pytest.mark.parametrize("status", ["received", "processing"])
def test_with_no_worker_seen_for_the_claim_timeout_a_delivery_takes_over_the_queue(
        status, queued, nomos, client, caplog):
    abandoned = waiting_in_the_queue(timedelta(seconds=70), status)
    other = make_event("invoice.paid", {"invoice": "inv_1"})
    assert post_event(client, other).status_code == 200
    stored = WebhookEvent.objects.get(event_id=abandoned["id"])
    assert stored.status == "processed"
    assert nomos.count(SUB_GET) == 1
    assert f"Took over webhook event {abandoned['id']}" in caplog.text
    assert f"left {'queued' if status == 'received' else 'processing'}" in caplog.text


def test_events_waiting_less_than_the_claim_timeout_are_left_to_the_queue(
        queued, nomos, client):
    recent = waiting_in_the_queue(timedelta(seconds=30))
    post_event(client, make_event("invoice.paid", {"invoice": "inv_1"}))
    assert WebhookEvent.objects.get(event_id=recent["id"]).status == "received"
    assert nomos.count(SUB_GET) == 0


def test_with_a_worker_seen_the_takeover_puts_back_and_leaves_the_queue_alone(
        queued, nomos, client):
    waiting = waiting_in_the_queue(timedelta(seconds=70))
    stuck = waiting_in_the_queue(timedelta(seconds=70), "processing")
    workers.seen("nomos")
    assert post_event(client, make_event("invoice.paid", {"invoice": "inv_1"})).status_code == 202
    assert WebhookEvent.objects.get(event_id=waiting["id"]).status == "received"
    assert WebhookEvent.objects.get(event_id=stuck["id"]).status == "received"  # put back
    assert [stuck["id"]] in [r.args for r in jobs(queued)]
    assert nomos.count(SUB_GET) == 0


# -- the setting ----------------------------------------------------------------------------


def handoff_messages() -> list[Any]:
    return [m for m in check_settings() if "WORKER_HANDOFF_TIMEOUT" in m.msg]


@pytest.mark.parametrize("value", ["5", -1, True, None, float("nan"), float("inf"), 20, 25])
def test_a_wrong_handoff_timeout_is_an_error_and_the_default_at_run_time(value, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "WORKER_HANDOFF_TIMEOUT": value}
    [message] = handoff_messages()
    assert (message.id, message.level >= 40) == ("nomos_billing.E031", True)
    assert nomos_settings.handoff_timeout == 5.0


def test_the_default_is_kept_within_a_small_webhook_budget(settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "WORKER_HANDOFF_TIMEOUT": "x",
                              "WEBHOOK_BUDGET": 4}
    assert nomos_settings.handoff_timeout == 2.0


@pytest.mark.parametrize(("value", "expected"), [(0, []), (5, []), (9.5, [])])
def test_handoff_timeouts_that_fit_pass(value, expected, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "WORKER_HANDOFF_TIMEOUT": value,
                              "TASK_BACKEND": "nomos"}
    settings.TASKS = {"nomos": DUMMY}
    assert [m.id for m in handoff_messages()] == expected
    assert nomos_settings.handoff_timeout == float(value)


def test_a_handoff_that_with_the_budget_outlasts_nomos_wait_is_a_warning(settings):
    settings.TASKS = {"nomos": DUMMY}
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "WORKER_HANDOFF_TIMEOUT": 12,
                              "TASK_BACKEND": "nomos"}
    assert [m.id for m in handoff_messages()] == ["nomos_billing.W031"]


def test_the_default_with_a_small_budget_is_no_error(settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "WEBHOOK_BUDGET": 5}
    assert handoff_messages() == []
    assert nomos_settings.handoff_timeout == 2.5


@pytest.mark.django_db
def test_a_fresh_stamp_is_enough_without_a_look_at_the_row(queued, django_assert_num_queries):
    event = WebhookEvent.objects.create(event_id="evt_stamp", topic="subscription.updated")
    workers.seen("nomos")
    with django_assert_num_queries(0):
        assert workers.handed_over(event, "nomos")
