"""Webhook processing on Django's tasks framework (``TASK_BACKEND``), with in-process backends:
the dummy backend keeps what was enqueued (so a test can see the request did not process and
then play the worker), the immediate one runs it at once. Real workers: test_tasks_workers.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from nomos_billing import lifecycle, tasks
from nomos_billing.checks import check_settings
from nomos_billing.models import NomosSubscription, WebhookEvent
from nomos_billing.sandbox import Fault, seed
from nomos_billing.testing import make_event, post_event

if not tasks.framework_available():
    pytest.skip("no tasks framework: Django 5.2 without the django-tasks backport",
                allow_module_level=True)

task_backends = tasks.task_backends
# Django 6 has the framework built in; on 5.2 the backport's package stands in for it.
FRAMEWORK = tasks.task_backends.__class__.__module__.split(".")[0]
if FRAMEWORK == "django":
    from django.tasks.backends.dummy import DummyBackend
    FRAMEWORK = "django.tasks"
else:  # pragma: no cover - Django 5.2
    from django_tasks.backends.dummy import DummyBackend

pytestmark = pytest.mark.django_db

SUB_GET = "GET /subscriptions/{id}"
DUMMY = {"BACKEND": f"{FRAMEWORK}.backends.dummy.DummyBackend"}
IMMEDIATE = {"BACKEND": f"{FRAMEWORK}.backends.immediate.ImmediateBackend"}


class RefusingBackend(DummyBackend):
    """A queue that is down: every enqueue raises as a broker client would."""

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


def task_checks() -> list[Any]:
    # The suite's local-memory cache draws W001 on its own; only the task backend matters here.
    return [m for m in check_settings() if "TASK_BACKEND" in m.msg]


def alice_event(**kwargs: Any) -> dict[str, Any]:
    return make_event("subscription.updated", {"subscription": seed.ALICE_SUBSCRIPTION}, **kwargs)


@pytest.fixture
def queued(nomos, settings):
    """TASK_BACKEND = "nomos" on a dummy backend; yields the backend."""
    settings.TASKS = {"default": IMMEDIATE, "nomos": DUMMY}
    # The test plays the worker when it likes: a queue whose workers run on a schedule.
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "nomos",
                              "WORKER_HANDOFF_TIMEOUT": 0}
    backend = task_backends["nomos"]
    backend.clear()
    yield backend
    backend.clear()


def enqueued(backend: DummyBackend) -> list[tuple[Any, ...]]:
    return [(r.task.name, tuple(r.args), r.kwargs) for r in backend.results]


def jobs(backend: DummyBackend) -> list[Any]:
    """What was queued, without the watchdogs (``watchdogs``)."""
    return [r for r in backend.results if not r.kwargs.get("takeover")]


def watchdogs(backend: DummyBackend) -> list[Any]:
    """The deferred takeovers a worker queues for each claim it takes."""
    return [r for r in backend.results if r.kwargs.get("takeover")]


#: More jobs than any test queues: a re-enqueue that stops counting fails here, at once,
#: instead of growing the queue until pytest-timeout.
MAX_JOBS = 50


def work(backend: DummyBackend) -> list[str]:
    """Play the worker: run what is queued (and what that queues) in order, once each. Not the
    watchdogs: they wait out CLAIM_TIMEOUT, and their tests run them on purpose."""
    outcomes = []
    for done in range(MAX_JOBS):
        if done >= len(backend.results):
            return outcomes
        result = backend.results[done]
        if not result.kwargs.get("takeover"):
            outcomes.append(result.task.call(*result.args, **result.kwargs))
    raise AssertionError(f"more than {MAX_JOBS} jobs queued: a retry loop that does not end")


def test_view_records_enqueues_by_id_and_answers_202_without_calling_nomos(queued, client):
    event = alice_event()
    response = post_event(client, event)
    assert (response.status_code, response.content) == (202, b"queued\n")
    stored = WebhookEvent.objects.get()
    assert (stored.event_id, stored.status, stored.attempts) == (event["id"], "received", 0)
    assert enqueued(queued) == [("process_webhook_event", (event["id"],),
                                {"force": False, "retry": 0})]
    assert not NomosSubscription.objects.exists()


def test_worker_processes_the_event_with_the_same_claim(queued, nomos, client):
    event = alice_event()
    post_event(client, event)
    assert nomos.count(SUB_GET) == 0
    assert work(queued) == ["processed"]
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.attempts) == ("processed", 1)
    assert NomosSubscription.objects.get().status == nomos.subscriptions[
        seed.ALICE_SUBSCRIPTION]["status"]
    assert nomos.count(SUB_GET) == 1
    # A second copy of the job (a duplicate enqueue) finds the event done: no second fetch.
    assert tasks.process_webhook_event.call(event["id"]) == "busy"
    assert nomos.count(SUB_GET) == 1


def test_duplicate_deliveries_of_a_queued_event_enqueue_once(queued, nomos, client):
    event = alice_event()
    answers = [post_event(client, event).status_code for _ in range(5)]
    assert answers == [202] * 5
    assert len(jobs(queued)) == 1
    assert WebhookEvent.objects.get().deliveries == 5
    work(queued)
    assert post_event(client, event).status_code == 200
    assert len(jobs(queued)) == 1
    assert nomos.count(SUB_GET) == 1


def test_a_received_event_whose_job_was_lost_is_enqueued_again(queued, client):
    event = alice_event()
    post_event(client, event)
    WebhookEvent.objects.update(updated_at=timezone.now() - timedelta(hours=1))
    assert post_event(client, event).status_code == 202
    assert len(jobs(queued)) == 2


def test_queue_down_answers_503_keeps_the_event_and_a_redelivery_enqueues_it(
        queued, nomos, client, settings):
    settings.TASKS = {**settings.TASKS, "nomos": {"BACKEND": f"{__name__}.RefusingBackend"}}
    event = alice_event()
    response = post_event(client, event)
    assert response.status_code == 503
    assert b"queue" in response.content
    stored = WebhookEvent.objects.get()
    assert stored.status == "failed"
    assert "Could not enqueue: ConnectionError" in stored.last_error
    assert nomos.count(SUB_GET) == 0
    # The queue is back; Nomos redelivers.
    settings.TASKS = {**settings.TASKS, "nomos": DUMMY}
    backend = task_backends["nomos"]
    assert post_event(client, event).status_code == 202
    assert work(backend) == ["processed"]
    assert WebhookEvent.objects.get().status == "processed"
    assert nomos.count(SUB_GET) == 1


def test_alias_missing_from_tasks_answers_503_and_the_check_warns(nomos, client, settings):
    settings.TASKS = {"default": IMMEDIATE}
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "worker"}
    [warning] = task_checks()
    assert warning.id == "nomos_billing.W030"
    assert "'worker'" in warning.msg and "default" in warning.msg
    response = post_event(client, alice_event())
    assert response.status_code == 503
    assert WebhookEvent.objects.get().status == "failed"
    assert nomos.count(SUB_GET) == 0


@pytest.mark.parametrize("value", [3, "", ["default"]])
def test_task_backend_of_the_wrong_type_is_an_error(settings, value):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": value}
    assert [m.id for m in task_checks()] == ["nomos_billing.E030"]


def test_known_alias_passes_the_check(settings):
    settings.TASKS = {"default": IMMEDIATE}
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "default"}
    assert task_checks() == []


def test_immediate_backend_processes_during_enqueue(nomos, client, settings):
    settings.TASKS = {"default": IMMEDIATE}
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "default"}
    assert post_event(client, alice_event()).status_code == 202
    assert WebhookEvent.objects.get().status == "processed"
    assert nomos.count(SUB_GET) == 1


def test_outage_in_the_worker_is_retried_later_with_growing_delays_then_left_failed(
        queued, nomos, client, settings, caplog):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "MAX_RETRIES": 0}
    nomos.add_fault(SUB_GET, Fault(status=503), times=None)
    event = alice_event()
    post_event(client, event)
    outcomes = work(queued)
    # The first job and one re-enqueue per delay, then no more.
    assert len(jobs(queued)) == 1 + len(lifecycle.RETRY_DELAYS)
    assert outcomes == ["failed"] * len(jobs(queued))
    assert [r.kwargs for r in jobs(queued)] == [
        {"force": False, "retry": n} for n in range(len(jobs(queued)))]
    delays = [(r.task.run_after - r.enqueued_at).total_seconds() for r in jobs(queued)[1:]]
    assert [round(d) for d in delays] == list(lifecycle.RETRY_DELAYS)
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.attempts) == ("failed", 1 + len(lifecycle.RETRY_DELAYS))
    assert (f"Webhook event {event['id']} failed {1 + len(lifecycle.RETRY_DELAYS)} times in the "
            "worker; kept as failed for nomos_replay") in [r.getMessage() for r in caplog.records]
    # Nomos is back: the event is still replayable.
    nomos.clear_faults()
    call_command("nomos_replay", event["id"], stdout=_Sink())
    assert len(jobs(queued)) == 2 + len(lifecycle.RETRY_DELAYS)
    assert work(queued)[-1] == "processed"
    assert WebhookEvent.objects.get().status == "processed"


def test_a_bad_event_is_not_retried(queued, nomos, client, settings):
    # A 404 past NOT_FOUND_RETRY_WINDOW (here: none) is final; inside it, it is retried.
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "NOT_FOUND_RETRY_WINDOW": 0}
    event = make_event("subscription.updated", {"subscription": "sub_unknown"})
    post_event(client, event)
    assert work(queued) == ["failed"]
    assert len(jobs(queued)) == 1
    assert nomos.count(SUB_GET) == 1


class _Sink:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_replay_enqueues_with_force_when_a_backend_is_set(queued, nomos, client):
    event = alice_event()
    post_event(client, event)
    work(queued)
    out = _Sink()
    call_command("nomos_replay", event["id"], stdout=out)
    assert f"{event['id']} subscription.updated: queued" in out.text
    assert enqueued(queued)[-1] == ("process_webhook_event", (event["id"],),
                                    {"force": True, "retry": 0})
    assert work(queued)[-1] == "processed"
    assert WebhookEvent.objects.get().attempts == 2
    assert nomos.count(SUB_GET) == 2


def test_replay_stops_when_the_queue_is_down(queued, nomos, client, settings):
    event = alice_event()
    post_event(client, event)
    settings.TASKS = {**settings.TASKS, "nomos": {"BACKEND": f"{__name__}.RefusingBackend"}}
    with pytest.raises(CommandError, match="queue"):
        call_command("nomos_replay", event["id"], stdout=_Sink())


def test_admin_process_again_enqueues_when_a_backend_is_set(queued, nomos, admin_client):
    event = alice_event()
    from nomos_billing.deliveries import record_event

    stored, _ = record_event(event)
    response = admin_client.post(
        "/admin/nomos_billing/webhookevent/",
        {"action": "process_again", "_selected_action": [stored.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "1 queued" in response.content.decode()
    assert enqueued(queued) == [("process_webhook_event", (event["id"],),
                                {"force": True, "retry": 0})]
    assert nomos.count(SUB_GET) == 0


# -- a worker killed mid-event: watchdogs and the view's takeover ---------------------------------


def stuck_in_a_worker(age: timedelta = timedelta(seconds=70)) -> dict[str, Any]:
    """An event a worker claimed ``age`` ago (after the view answered 202), then died."""
    event = alice_event()
    WebhookEvent.objects.create(event_id=event["id"], topic=event["topic"], payload=event,
                                status="processing", attempts=1,
                                claimed_at=timezone.now() - age)
    return event


def run(result: Any) -> str:
    return result.task.call(*result.args, **result.kwargs)


def test_each_claim_a_worker_takes_queues_its_watchdog_past_the_claim_timeout(
        queued, nomos, client):
    event = alice_event()
    post_event(client, event)
    assert work(queued) == ["processed"]
    [watchdog] = watchdogs(queued)
    assert (watchdog.args, watchdog.kwargs) == (
        [event["id"]], {"force": False, "retry": 0, "takeover": True})
    delay = (watchdog.task.run_after - watchdog.enqueued_at).total_seconds()
    assert round(delay) == 60 + tasks.WATCHDOG_MARGIN  # CLAIM_TIMEOUT 60 s
    # The worker finished: its watchdog finds the event done and calls nobody.
    assert run(watchdog) == "busy"
    assert nomos.count(SUB_GET) == 1
    assert len(watchdogs(queued)) == 1


def test_the_watchdog_of_a_worker_that_died_takes_the_event_over(queued, nomos, caplog):
    event = stuck_in_a_worker()
    result = tasks.enqueue(event["id"], takeover=True, delay=61)
    assert run(result) == "processed"
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.attempts) == ("processed", 2)
    assert nomos.count(SUB_GET) == 1
    assert f"Took over webhook event {event['id']}, left processing by a worker that stopped" in [
        r.getMessage() for r in caplog.records
    ]
    # Its own claim is watched in turn.
    assert len(watchdogs(queued)) == 2


@pytest.mark.parametrize(("status", "age"), [("failed", None), ("processing", 10)],
                         ids=["failed: its retry is planned", "a live claim"])
def test_a_watchdog_takes_over_stuck_claims_only(status, age, queued, nomos):
    event = stuck_in_a_worker()
    WebhookEvent.objects.update(
        status=status, claimed_at=timezone.now() - timedelta(seconds=age) if age else None)
    assert run(tasks.enqueue(event["id"], takeover=True)) == "busy"
    assert WebhookEvent.objects.get().status == status
    assert nomos.count(SUB_GET) == 0


def test_redelivery_during_a_workers_claim_is_409_and_enqueues_nothing(queued, client):
    event = stuck_in_a_worker(timedelta(seconds=5))
    response = post_event(client, event)
    assert (response.status_code, response["Retry-After"]) == (409, "55")
    assert queued.results == []


def test_a_delivery_puts_a_stuck_event_back_in_the_queue_once(queued, nomos, client, caplog):
    event = stuck_in_a_worker()
    # Last changed when its worker claimed it; being put back is a change (the admin's column).
    claimed_at = WebhookEvent.objects.get().claimed_at
    WebhookEvent.objects.update(updated_at=claimed_at)
    other = make_event("subscription.updated", {"subscription": seed.ALICE_SUBSCRIPTION})
    before = timezone.now()
    assert post_event(client, other).status_code == 202
    stored = WebhookEvent.objects.get(event_id=event["id"])
    assert (stored.status, stored.claimed_at) == ("received", None)
    assert stored.updated_at >= before
    assert [r.args for r in jobs(queued)] == [[other["id"]], [event["id"]]]
    assert f"Put webhook event {event['id']} back in the queue" in caplog.text
    # Another process looking now finds nothing stuck: no second copy.
    from nomos_billing import takeover

    takeover.reset()
    post_event(client, make_event("invoice.paid", {"invoice": "inv_1"}))
    assert [r.args for r in jobs(queued)].count([event["id"]]) == 1
    # The first job takes the event back in the queue along (same subscription: one fetch).
    assert work(queued) == ["processed", "busy", "processed"]
    assert WebhookEvent.objects.get(event_id=event["id"]).attempts == 2


def test_a_stuck_event_the_queue_refuses_stays_stuck_for_the_next_look(
        queued, nomos, client, settings):
    event = stuck_in_a_worker()
    claimed_at = WebhookEvent.objects.get().claimed_at
    # An event waiting in the queue for its job, which no worker has taken yet.
    waiting = make_event("invoice.paid", {"invoice": "inv_0"})
    WebhookEvent.objects.create(event_id=waiting["id"], topic=waiting["topic"], payload=waiting)
    settings.TASKS = {**settings.TASKS, "nomos": {"BACKEND": f"{__name__}.RefusingBackend"}}
    # The queue refuses this delivery too (503, Nomos redelivers it); the look still runs.
    assert post_event(client, make_event("invoice.paid", {"invoice": "inv_1"})).status_code == 503
    stored = WebhookEvent.objects.get(event_id=event["id"])
    # Not failed: Nomos had its 202 and will not redeliver.
    assert (stored.status, stored.claimed_at) == ("processing", claimed_at)
    # Only the stuck event is made stuck again: the waiting one stays the queue's.
    other = WebhookEvent.objects.get(event_id=waiting["id"])
    assert (other.status, other.claimed_at) == ("received", None)


# -- what the worker and the health page read from the backend -------------------------------


def test_the_task_a_worker_imports_is_bound_to_task_backend(queued, settings):
    # The worker of TASK_BACKEND must accept the Task it imports by path.
    assert tasks.process_webhook_event.backend == "nomos"
    assert tasks.catch_up.backend == "nomos"
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "not-in-tasks"}
    assert tasks.process_webhook_event.backend == "default"


@pytest.fixture
def db_queue(settings):
    pytest.importorskip("django_tasks_db")
    settings.TASKS = {"default": IMMEDIATE,
                      "nomos": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    # The test plays the worker when it likes: a queue whose workers run on a schedule.
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "nomos",
                              "WORKER_HANDOFF_TIMEOUT": 0}


def test_queue_depth_of_the_database_backend_counts_ready_tasks(db_queue):
    assert tasks.queue_depth() == 0
    tasks.enqueue("evt_1")
    tasks.enqueue("evt_2")
    tasks.enqueue("evt_later", delay=3600)  # a retry after an outage waits there too
    assert tasks.queue_depth() == 3


def test_queue_depth_that_cannot_be_read_is_unknown_and_logged(db_queue, monkeypatch, caplog):
    from django_tasks_db.models import DBTaskResult

    def broken() -> Any:
        raise RuntimeError("no table")

    monkeypatch.setattr(DBTaskResult.objects, "filter", lambda *a, **k: broken())
    caplog.set_level("INFO", logger="nomos_billing.tasks")
    assert tasks.queue_depth() is None
    [record] = [r for r in caplog.records if "queue depth" in r.getMessage()]
    assert record.getMessage() == (
        "Could not read the queue depth of django_tasks_db.backend.DatabaseBackend")
    assert record.exc_info is not None and "no table" in str(record.exc_info[1])


def test_queue_depth_of_rq_sums_its_queues(settings, monkeypatch):
    pytest.importorskip("django_tasks_rq")
    import django_rq

    settings.TASKS = {"default": IMMEDIATE, "nomos": {
        "BACKEND": "django_tasks_rq.RQBackend", "QUEUES": ["default", "low"]}}
    # The test plays the worker when it likes: a queue whose workers run on a schedule.
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "nomos",
                              "WORKER_HANDOFF_TIMEOUT": 0}
    class Queue(list):
        """An RQ queue: its jobs, and the scheduled ones (retries) in their registry."""

        def __init__(self, jobs: int, scheduled: int) -> None:
            super().__init__(["job"] * jobs)
            self.scheduled_job_registry = type("Registry", (), {"count": scheduled})()

    sizes = {"default": Queue(3, 1), "low": Queue(2, 0)}
    monkeypatch.setattr(django_rq, "get_queue", lambda name: sizes[name])
    assert tasks.queue_depth() == 6


def test_queue_depth_of_a_backend_that_cannot_tell_is_unknown(queued):
    assert tasks.queue_depth() is None


def test_a_refused_enqueue_of_a_stale_claim_leaves_it_to_the_takeover(settings, client):
    """Marked failed only when received or failed: a claim in a worker's hands (stale here)
    is the takeover's to put back, never turned into a failure by a refused enqueue."""
    settings.TASKS = {"default": IMMEDIATE, "nomos": {"BACKEND": f"{__name__}.RefusingBackend"}}
    # The test plays the worker when it likes: a queue whose workers run on a schedule.
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "nomos",
                              "WORKER_HANDOFF_TIMEOUT": 0}
    event = alice_event()
    WebhookEvent.objects.create(event_id=event["id"], topic=event["topic"], payload=event,
                                status="processing", attempts=1,
                                claimed_at=timezone.now() - timedelta(minutes=5))
    assert post_event(client, event).status_code == 503
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.last_error) == ("processing", "")


def test_admin_process_again_counts_each_event_the_queue_refuses(queued, nomos, admin_client,
                                                                  settings):
    from django.contrib.messages import ERROR, SUCCESS

    from nomos_billing.deliveries import record_event

    stored = [record_event(alice_event())[0] for _ in range(2)]
    everything = {"action": "process_again", "_selected_action": [e.pk for e in stored]}
    queued_ok = admin_client.post("/admin/nomos_billing/webhookevent/", everything, follow=True)
    [(text, level)] = [(str(m), m.level) for m in queued_ok.context["messages"]]
    assert (text, level) == (
        "Queued again for the task worker: 2 queued, 0 refused by the queue.", SUCCESS)

    settings.TASKS = {**settings.TASKS, "nomos": {"BACKEND": f"{__name__}.RefusingBackend"}}
    refused = admin_client.post("/admin/nomos_billing/webhookevent/", everything, follow=True)
    [(text, level)] = [(str(m), m.level) for m in refused.context["messages"]]
    assert (text, level) == (
        "Queued again for the task worker: 0 queued, 2 refused by the queue.", ERROR)


def test_a_task_for_an_event_pruned_meanwhile_reports_it_missing(queued, caplog):
    caplog.set_level("WARNING", logger="nomos_billing.tasks")
    tasks.enqueue("evt_pruned_meanwhile")
    [job] = queued.results
    assert run(job) == "missing"
    assert [r.getMessage() for r in caplog.records if r.name == "nomos_billing.tasks"] == [
        "Webhook event evt_pruned_meanwhile is gone; nothing to process"]


def test_an_unknown_attribute_of_tasks_is_an_attribute_error_that_names_it():
    with pytest.raises(AttributeError) as raised:
        tasks.nope  # noqa: B018
    assert str(raised.value) == "module 'nomos_billing.tasks' has no attribute 'nope'"


class NoDeferBackend(DummyBackend):
    """A queue that cannot run a job later."""

    supports_defer = False


def test_an_outage_on_a_backend_that_cannot_defer_is_left_failed_without_a_retry(
        nomos, client, settings, caplog):
    settings.TASKS = {"default": IMMEDIATE, "nomos": {"BACKEND": f"{__name__}.NoDeferBackend"}}
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "nomos",
                              "MAX_RETRIES": 0, "WORKER_HANDOFF_TIMEOUT": 0}
    backend = task_backends["nomos"]
    backend.clear()
    nomos.add_fault(SUB_GET, Fault(status=503), times=None)
    caplog.set_level("WARNING", logger="nomos_billing.tasks")
    post_event(client, alice_event())
    assert work(backend) == ["failed"]
    assert WebhookEvent.objects.get().status == "failed"
    assert nomos.count(SUB_GET) == 1
    # Not even tried: a retry at once would hammer Nomos while it is down.
    assert not [r for r in caplog.records if "re-enqueue" in r.getMessage()]


def test_a_worker_whose_queue_refuses_its_watchdog_and_its_retry_says_so(
        queued, nomos, client, settings, caplog):
    # The queue went down between the job's enqueue and its run: the worker still processes,
    # and tells the operator what it could not queue (the event stays failed, replayable).
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "MAX_RETRIES": 0}
    nomos.add_fault(SUB_GET, Fault(status=503), times=None)
    event = alice_event()
    post_event(client, event)
    [job] = jobs(queued)
    settings.TASKS = {**settings.TASKS, "nomos": {"BACKEND": f"{__name__}.RefusingBackend"}}
    caplog.set_level("WARNING", logger="nomos_billing.tasks")
    assert run(job) == "failed"
    assert [r.getMessage() for r in caplog.records if r.name == "nomos_billing.tasks"] == [
        f"Could not enqueue the watchdog of webhook event {event['id']}: ConnectionError: "
        "Error 111 connecting to 127.0.0.1:6379. Connection refused.",
        f"Could not re-enqueue webhook event {event['id']}; kept as failed",
    ]
    assert WebhookEvent.objects.get().status == "failed"


def test_an_alias_missing_from_tasks_is_named_when_enqueueing(queued, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "not-in-tasks"}
    with pytest.raises(ImproperlyConfigured) as raised:
        tasks.enqueue("evt_1")
    assert str(raised.value).startswith("NOMOS_BILLING['TASK_BACKEND'] = 'not-in-tasks': ")


def test_without_the_tasks_framework_task_backend_is_explained_and_the_depth_unknown(
        queued, monkeypatch):
    # Django 5.2 without the backport: what the import finds then.
    monkeypatch.setattr(tasks, "task", None)
    monkeypatch.setattr(tasks, "task_backends", None)
    with pytest.raises(ImproperlyConfigured) as raised:
        tasks.get_backend()
    assert str(raised.value) == (
        "NOMOS_BILLING['TASK_BACKEND'] is set but Django's tasks framework is not installed: "
        "use Django 6.0+, or install nomos-billing[tasks] on Django 5.2.")
    # The health page's read of the queue never raises: there is no queue to count.
    assert tasks.queue_depth() is None


def test_a_workers_retry_waits_at_least_what_nomos_asked(queued, nomos, client, settings):
    # Nomos' Retry-After (here longer than the first of RETRY_DELAYS) is a floor for the delay.
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "MAX_RETRIES": 0}
    assert lifecycle.RETRY_DELAYS[0] < 300
    nomos.add_fault(SUB_GET, Fault(status=503, retry_after=300), times=1)
    post_event(client, alice_event())
    assert work(queued) == ["failed", "processed"]
    retried = jobs(queued)[1]
    assert retried.kwargs == {"force": False, "retry": 1}
    assert round((retried.task.run_after - retried.enqueued_at).total_seconds()) == 300


def test_a_job_naming_only_the_event_is_a_first_attempt(queued, nomos, settings):
    # A job queued with the event id alone (by a site, or before retry was a parameter):
    # not forced, and its retries count from the first.
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "MAX_RETRIES": 0}
    event = stuck_in_a_worker()
    WebhookEvent.objects.update(status="failed", claimed_at=None)
    nomos.add_fault(SUB_GET, Fault(status=503), times=1)
    assert tasks.process_webhook_event.call(event["id"]) == "failed"
    [retried] = jobs(queued)
    assert retried.kwargs == {"force": False, "retry": 1}
    delay = (retried.task.run_after - retried.enqueued_at).total_seconds()
    assert round(delay) == lifecycle.RETRY_DELAYS[0]
    # A processed event is left alone (not forced).
    nomos.clear_faults()
    assert work(queued) == ["processed"]
    assert tasks.process_webhook_event.call(event["id"]) == "busy"
    assert nomos.count(SUB_GET) == 2


def test_the_watchdog_of_a_retry_carries_its_count(queued, nomos, settings):
    # Were the watchdog to take the event over, its own retries go on counting where the
    # job's stopped: the retries stay bounded by RETRY_DELAYS.
    event = stuck_in_a_worker()
    WebhookEvent.objects.update(status="failed", claimed_at=None)
    assert run(tasks.enqueue(event["id"], retry=2)) == "processed"
    [watchdog] = watchdogs(queued)
    assert watchdog.kwargs == {"force": False, "retry": 2, "takeover": True}


def test_events_taken_along_are_watched_as_first_attempts_and_not_taken_over(
        queued, nomos, client, caplog):
    first, second = alice_event(), alice_event()
    post_event(client, first)
    post_event(client, second)
    caplog.set_level("WARNING", logger="nomos_billing.tasks")
    assert work(queued) == ["processed", "busy"]
    assert nomos.count(SUB_GET) == 1  # the second was taken along by the first's fetch
    assert sorted((w.args[0], w.kwargs["retry"], w.kwargs["takeover"])
                  for w in watchdogs(queued)) == sorted(
        [(first["id"], 0, True), (second["id"], 0, True)])
    assert not [r for r in caplog.records if r.name == "nomos_billing.tasks"]


def test_enqueueing_without_task_backend_says_it_is_not_set(settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": None}
    with pytest.raises(ImproperlyConfigured) as raised:
        tasks.enqueue("evt_1")
    assert str(raised.value) == "NOMOS_BILLING['TASK_BACKEND'] is not set"
