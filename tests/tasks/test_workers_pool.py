"""Two task workers draining one queue under the site's Nomos budget (``API_RATE_LIMIT``, shared
through the cache), one of them SIGKILLed mid-event (issue 22): every event is still processed
exactly once, nothing stays stuck, and Nomos never sees more than the limit in any second.

Real worker processes (``db_worker`` / ``rqworker``) on PostgreSQL and Redis, with the helpers
of ``test_tasks_workers.py``; the sandbox at Nomos' limit (it answers 429 above it and records
every arrival).
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest

from nomos_billing.models import NomosSubscription, WebhookEvent
from nomos_billing.sandbox import Fault
from nomos_billing.testing import make_event
from tests.tasks.test_tasks_workers import (  # noqa: F401 - backend is a fixture
    ROOT,
    SUB_GET,
    _worker_env,
    backend,
    deliver_concurrently,
    kill,
    start_worker,
    stop,
    wait_until,
)

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

EVENTS = 60
RATE = 10
#: Longer than the few seconds the test may need to see which worker hangs: the victim must
#: still be inside its fetch when it is killed, not done with it (its budget spent).
CLAIMS = {"CLAIM_TIMEOUT": 10, "WEBHOOK_BUDGET": 8, "API_RATE_LIMIT": RATE}


def start_named(alias: str, sandbox_url: str, name: str, *,
                scheduler: bool) -> subprocess.Popen[str]:
    """A long-running worker that records ``name`` on the tasks it runs (``stop`` reads its
    log). ``scheduler``: RQ runs deferred jobs, the watchdogs, only with one."""
    return start_worker(alias, sandbox_url, scheduler=scheduler, name=name, **CLAIMS)


def running(alias: str) -> dict[str, str]:
    """The tasks being run now: task id -> the name of the worker running it."""
    if alias == "db":
        from django_tasks_db.models import DBTaskResult

        return {str(pk): ids[-1] for pk, ids in DBTaskResult.objects.filter(
            status="RUNNING").values_list("pk", "worker_ids")}
    import django_rq
    from rq.job import Job

    queue = django_rq.get_queue("default")
    jobs = Job.fetch_many(queue.started_job_registry.get_job_ids(), connection=queue.connection)
    return {job.id: job.worker_name or "" for job in jobs if job is not None}


def ran(alias: str) -> set[str]:
    """The names of the workers that finished a task."""
    if alias == "db":
        from django_tasks_db.models import DBTaskResult

        return {ids[-1] for ids in DBTaskResult.objects.filter(
            status="SUCCESSFUL").values_list("worker_ids", flat=True)}
    import django_rq
    from rq.job import Job

    queue = django_rq.get_queue("default")
    jobs = Job.fetch_many(queue.finished_job_registry.get_job_ids(), connection=queue.connection)
    return {job.worker_name for job in jobs if job is not None and job.worker_name}


def hanging(alias: str, names: set[str], held: float = 1.5) -> str:
    """The one of ``names`` whose task has been running for ``held`` seconds, watched from here
    (each event takes a fraction of that under the limit; only the hanging fetch lasts)."""
    first_seen: dict[str, float] = {}
    found: list[str] = []

    def one_hangs() -> bool:
        now = time.monotonic()
        for task_id, worker in running(alias).items():
            # A task another test's killed worker left running is not ours.
            if worker in names and now - first_seen.setdefault(task_id, now) >= held:
                found.append(worker)
                return True
        return False

    wait_until(one_hangs, "a worker to hang in its fetch")
    return found[0]


def test_two_workers_one_killed_mid_event_process_each_event_once_within_the_limit(
        backend: str, nomos: Any, settings: Any) -> None:  # noqa: F811 - the fixture
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, **CLAIMS}
    nomos.rate_limiter.set_limit(RATE)
    customer = nomos.add_customer("pool@example.com")
    subs = [nomos.add_subscription(customer["id"], status="active")["id"]
            for _ in range(EVENTS)]
    events = [make_event("subscription.updated", {"subscription": s}) for s in subs]
    assert deliver_concurrently(events) == [202] * EVENTS

    def processed() -> int:
        return WebhookEvent.objects.filter(status="processed").count()

    # RQ runs the watchdogs (deferred jobs) only in a worker that holds its scheduler lock:
    # neither of the two does, and the supervisor's replacement of the killed one takes it
    # (a killed holder's lock would lock the replacement out for a minute and more; docs).
    workers = {name: start_named(backend, nomos.base_url, name, scheduler=False)
               for name in ("a", "b")}
    try:
        wait_until(lambda: processed() >= 5, "both workers to run", bound=120)
        # The next fetch hangs: whichever worker makes it holds that claim when killed.
        nomos.add_fault(SUB_GET, Fault(hang=60))
        victim = hanging(backend, set(workers))
        held = list(WebhookEvent.objects.filter(status="processing")
                    .values_list("event_id", flat=True))
        kill(workers[victim])
        assert WebhookEvent.objects.filter(status="processing").exists()  # left behind
        assert processed() < EVENTS  # the other one still has a queue to drain
        if backend == "rq":
            workers["c"] = start_named(backend, nomos.base_url, "c", scheduler=True)
        end = time.monotonic() + 120  # a bound against hanging, not a performance threshold
        while processed() < EVENTS and time.monotonic() < end:
            time.sleep(0.1)
    finally:
        logs = {name: stop(process) for name, process in workers.items()}
    # The survivor drained the queue and took the killed worker's event over.
    assert processed() == EVENTS, (list(WebhookEvent.objects.exclude(status="processed")
                                        .values_list("status", "attempts")), logs)
    assert {"a", "b"} <= ran(backend)  # both drained the queue
    stored = {e.event_id: e for e in WebhookEvent.objects.all()}
    assert len(stored) == EVENTS, logs
    assert {e.status for e in stored.values()} == {"processed"}, logs
    assert all(e.deliveries == 1 for e in stored.values())
    # Exactly once: one attempt each, but the event the killed worker held (taken over).
    twice = {event_id for event_id, e in stored.items() if e.attempts == 2}
    assert len(twice) == 1 and twice <= set(held), (twice, held)
    assert {e.attempts for e in stored.values()} == {1, 2}
    # A fetch per event, and the killed one.
    assert nomos.count(SUB_GET) == EVENTS + 1
    assert set(NomosSubscription.objects.values_list("subscription_id", flat=True)) == set(subs)
    # Two processes and the takeover shared one budget: Nomos never had to refuse.
    assert nomos.rate_limiter.refused == 0
    assert not [e for e in nomos.request_log if e["status"] == 429]
    assert nomos.rate_limiter.busiest() <= RATE
    assert WebhookEvent.objects.stuck().count() == 0


@pytest.mark.django_db
def test_the_look_for_a_subscriptions_queued_events_reads_an_index_not_the_backlog() -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from nomos_billing import processing

    if connection.vendor != "postgresql":
        pytest.skip("the plan is PostgreSQL's (DATABASE_URL=postgres://...)")
    # Once per event a worker takes: over the whole backlog, a drain would cost N^2 rows.
    WebhookEvent.objects.bulk_create(
        [WebhookEvent(event_id=f"evt_backlog_{n}", topic="subscription.updated",
                      payload={"id": f"evt_backlog_{n}", "topic": "subscription.updated",
                               "context": {"subscription": f"sub_backlog_{n}"}})
         for n in range(3000)])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE nomos_billing_webhookevent")
    taken = WebhookEvent.objects.get(event_id="evt_backlog_7")
    with CaptureQueriesContext(connection) as captured:
        assert processing.claim_waiting(taken) == []
    look = next(q["sql"] for q in captured.captured_queries
                if q["sql"].startswith("SELECT") and "subscription" in q["sql"])
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + look)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "nomos_evt_waiting_idx" in plan, plan
    assert "Seq Scan" not in plan, plan
