"""Webhooks processed by real task workers: the database backend's ``db_worker`` and RQ's
``rqworker``, each a separate process started by the test, on PostgreSQL (the worker and the
suite share the test database) and Redis.

The workers run in burst mode after the deliveries were answered, so the sandbox's counters
prove that no request called Nomos, and the test ends when the queue is empty, not on a timer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from nomos_billing import tasks
from nomos_billing.models import NomosSubscription, WebhookEvent
from nomos_billing.sandbox import Fault, seed
from nomos_billing.testing import make_event, post_event
from tests.ci_skips import NOT_APPLICABLE

ROOT = Path(__file__).resolve().parents[2]
SUB_GET = "GET /subscriptions/{id}"
BACKENDS = {
    "db": {"BACKEND": "django_tasks_db.DatabaseBackend"},
    "rq": {"BACKEND": "django_tasks_rq.RQBackend"},
}

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _redis_up() -> bool:
    try:
        import django_rq

        return bool(django_rq.get_connection("default").ping())
    except Exception:
        return False


@pytest.fixture(params=["db", "rq"])
def backend(request, nomos, settings) -> str:
    alias = request.param
    if connection.vendor != "postgresql":
        pytest.skip("a worker process shares the test database only on PostgreSQL "
                    "(DATABASE_URL=postgres://...)")
    if alias == "db" and not tasks.framework_available():
        pytest.skip("no tasks framework installed")
    if alias == "rq":
        if not _redis_up():
            pytest.skip(f"no Redis for RQ at {settings.RQ_QUEUES['default']['URL']} "
                        "(NOMOS_TEST_RQ_URL, or CACHE_URL's next db)")
        import django_rq

        queue = django_rq.get_queue("default")
        queue.empty()
        # A scheduler SIGKILLed by an earlier test keeps its lock for a minute: this test's
        # workers start from a clean Redis, as after a supervisor's restart.
        queue.connection.delete("rq:scheduler-lock:default")
    settings.TASKS = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"},
                      alias: BACKENDS[alias]}
    # Workers start after the deliveries (burst mode): a queue whose workers run on a schedule.
    # test_workers_handoff.py starts them first and leaves the handoff check on.
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": alias,
                              "WORKER_HANDOFF_TIMEOUT": 0}
    return alias


def _worker_env(alias: str, sandbox_url: str, **settings: Any) -> dict[str, str]:
    db = connection.settings_dict
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.worker_settings",
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:"
                        f"{db['PORT'] or 5432}/{db['NAME']}",
        "NOMOS_TEST_API_BASE_URL": sandbox_url,
        "NOMOS_TEST_TASK_BACKEND": alias,
        "NOMOS_TEST_SETTINGS": json.dumps(settings),
    }


def run_workers(alias: str, sandbox_url: str, count: int = 2, *, simple: bool = False
                ) -> list[str]:
    """Start ``count`` worker processes at once, each draining the queue and exiting.
    ``simple``: RQ's ``SimpleWorker``, which runs each job in its own process (no fork)."""
    env = _worker_env(alias, sandbox_url)
    if alias == "db":
        command = ["db_worker", "--batch", "--backend", "db", "--no-startup-delay",
                   "--interval", "0.1"]
    else:
        command = ["rqworker", "default", "--burst", "--job-class", "django_tasks_rq.Job"]
        command += ["--worker-class", "rq.worker.SimpleWorker"] if simple else []
    processes = [
        subprocess.Popen([sys.executable, "-m", "django", *command], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(count)
    ]
    outputs = []
    for process in processes:
        out, _ = process.communicate(timeout=180)
        assert process.returncode == 0, out
        outputs.append(out)
    return outputs


def deliver_concurrently(events: list[dict[str, Any]], threads: int = 8) -> list[int]:
    def post(event: dict[str, Any]) -> int:
        try:
            return post_event(Client(), event).status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(post, events))


def test_50_concurrent_deliveries_of_one_event_fetch_once(backend, nomos):
    event = make_event("subscription.updated", {"subscription": seed.ALICE_SUBSCRIPTION})
    answers = deliver_concurrently([event] * 50, threads=10)
    assert set(answers) == {202}
    assert nomos.count(SUB_GET) == 0  # no request called Nomos
    # A replay queued meanwhile leaves a second copy of the job: two workers race for it.
    tasks.enqueue(event["id"])
    run_workers(backend, nomos.base_url)
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.attempts, stored.deliveries) == ("processed", 1, 50)
    assert nomos.count(SUB_GET) == 1


@pytest.mark.sandbox_rate_limit(0)  # the fetches as fast as the workers go: none refused
def test_rq_simple_workers_process_each_event_once(backend, nomos):
    """The docs suggest ``--worker-class rq.worker.SimpleWorker`` where workers share the web
    servers' CPU: jobs then run in the worker's own process, one Django set-up for all."""
    if backend != "rq":
        pytest.skip(f"{NOT_APPLICABLE}a worker class of RQ's")
    customer = nomos.add_customer("simple@example.com")
    subs = [nomos.add_subscription(customer["id"], status="active") for _ in range(20)]
    events = [make_event("subscription.created", {"subscription": s["id"]}) for s in subs]
    assert deliver_concurrently(events + events[:5]) == [202] * 25
    assert nomos.count(SUB_GET) == 0
    run_workers(backend, nomos.base_url, simple=True)
    stored = WebhookEvent.objects.all()
    assert {(e.status, e.attempts) for e in stored} == {("processed", 1)}
    assert sorted(e.deliveries for e in stored) == [1] * 15 + [2] * 5
    assert nomos.count(SUB_GET) == 20


# Two hundred fetches as fast as the worker goes: all processed, not pacing.
@pytest.mark.sandbox_rate_limit(0)
def test_200_distinct_events_are_all_processed(backend, nomos):
    customer = nomos.add_customer("many@example.com")
    subs = [nomos.add_subscription(customer["id"], status="active") for _ in range(200)]
    events = [make_event("subscription.created", {"subscription": s["id"]}) for s in subs]
    answers = deliver_concurrently(events)
    assert answers == [202] * 200
    assert nomos.count(SUB_GET) == 0
    assert WebhookEvent.objects.filter(status="received").count() == 200
    run_workers(backend, nomos.base_url)
    assert WebhookEvent.objects.filter(status="processed").count() == 200
    assert nomos.count(SUB_GET) == 200
    assert set(NomosSubscription.objects.values_list("subscription_id", flat=True)) == {
        s["id"] for s in subs}


def test_queue_down_answers_503_and_the_redelivery_is_processed(backend, nomos, settings):
    if backend != "rq":
        pytest.skip(f"{NOT_APPLICABLE}the database backend's queue is the database itself: "
                    "when it is down, recording fails first")
    working = settings.RQ_QUEUES
    settings.RQ_QUEUES = {"default": {"URL": "redis://127.0.0.1:1/0"}}  # nothing listens
    event = make_event("subscription.updated", {"subscription": seed.ALICE_SUBSCRIPTION})
    response = post_event(Client(), event)
    assert response.status_code == 503
    assert WebhookEvent.objects.get().status == "failed"
    settings.RQ_QUEUES = working
    assert post_event(Client(), event).status_code == 202  # Nomos redelivers
    assert nomos.count(SUB_GET) == 0
    run_workers(backend, nomos.base_url, count=1)
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.deliveries) == ("processed", 2)
    assert nomos.count(SUB_GET) == 1


def start_worker(alias: str, sandbox_url: str, *, scheduler: bool = True, name: str = "",
                 **settings: Any) -> subprocess.Popen[str]:
    """A long-running worker, as a supervisor runs it, in its own process group. ``scheduler``:
    RQ runs deferred jobs only in a worker started ``--with-scheduler``. ``name``: the worker id
    it records on the tasks it runs."""
    if alias == "db":
        command = ["db_worker", "--backend", "db", "--no-startup-delay", "--interval", "0.1"]
        command += ["--worker-id", name] if name else []
    else:
        command = ["rqworker", "default", "--job-class", "django_tasks_rq.Job"]
        command += ["--with-scheduler"] if scheduler else []
        command += ["--name", name] if name else []
    # Output to a file, not a pipe nobody reads while the test waits: a full pipe would block
    # a worker that logs, which then looks like a worker that never takes anything over.
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen([sys.executable, "-m", "django", *command], cwd=ROOT,
                               env=_worker_env(alias, sandbox_url, **settings),
                               stdout=log, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    process.log = log  # type: ignore[attr-defined]
    return process


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fp:
                    if int(fp.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def kill(process: subprocess.Popen[str]) -> None:
    """SIGKILL the worker and the work horse it forked (RQ's has a session of its own)."""
    for pid in [*_children(process.pid), process.pid]:
        os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    if process.poll() is None:
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    log = process.log  # type: ignore[attr-defined]
    log.seek(0)
    out = log.read()
    log.close()
    return out


def wait_until(condition: Any, what: str, bound: float = 60) -> None:
    # A bound against hanging forever, not a performance threshold.
    end = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_worker_killed_mid_event_is_taken_over_without_a_redelivery(backend, nomos, settings):
    claim_timeout = 6
    claims = {"CLAIM_TIMEOUT": claim_timeout, "WEBHOOK_BUDGET": 5}
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, **claims}
    # Nomos is slow for the first fetch: the worker is killed while it holds the claim.
    nomos.add_fault(SUB_GET, Fault(hang=60))
    event = make_event("subscription.updated", {"subscription": seed.ALICE_SUBSCRIPTION})

    def status() -> str:
        return WebhookEvent.objects.get().status

    assert post_event(Client(), event).status_code == 202
    # Without a scheduler, so that the successor's is not locked out by the dead worker's.
    victim = start_worker(backend, nomos.base_url, scheduler=False, **claims)
    successor = None
    try:
        wait_until(lambda: status() == "processing" and nomos.count(SUB_GET) == 1,
                   "the worker to hold the claim")
        # A redelivery meanwhile: not a 2xx, so a sender would try again.
        during = post_event(Client(), event)
        assert during.status_code == 409, during.content
        assert 1 <= int(during["Retry-After"]) <= claim_timeout
        # The pool's other worker is up before the kill, so that what is measured is the
        # takeover, not how long a loaded machine takes to start Django.
        successor = start_worker(backend, nomos.base_url, **claims)
        kill(victim)
        killed = time.monotonic()
        assert status() == "processing"  # left behind, and Nomos had its 202
        try:
            wait_until(lambda: status() == "processed", "the takeover", bound=4 * claim_timeout)
        except AssertionError as exc:
            # What the successor did, for whoever reads a failure on a loaded machine.
            log, successor = stop(successor), None
            raise AssertionError(f"{exc}\n{WebhookEvent.objects.values().get()}\n{log}") from exc
        took = time.monotonic() - killed
    finally:
        for process in (victim, successor):
            if process is not None:
                stop(process)
    assert took < 2 * claim_timeout, took
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.attempts, stored.deliveries) == ("processed", 2, 2)
    assert nomos.count(SUB_GET) == 2  # the killed fetch and the one that completed
    assert NomosSubscription.objects.filter(subscription_id=seed.ALICE_SUBSCRIPTION).exists()


def job_outcomes(alias: str, event_id: str) -> list[Any]:
    """What the finished jobs of ``event_id`` returned (watchdogs left out)."""
    if alias == "db":
        from django_tasks_db.models import DBTaskResult

        return [r.return_value for r in DBTaskResult.objects.filter(status="SUCCESSFUL")
                if r.args_kwargs["args"] == [event_id]
                and not r.args_kwargs["kwargs"].get("takeover")]
    import django_rq

    queue = django_rq.get_queue("default")
    found = [queue.fetch_job(job_id) for job_id in queue.finished_job_registry.get_job_ids()]
    return [job.return_value() for job in found
            if job is not None and list(job.args)[-1:] == [event_id]
            and not job.kwargs.get("takeover")]


def test_a_delivery_after_the_worker_died_is_processed_by_the_view(backend, nomos, settings):
    """202 while a worker is alive; after it was SIGKILLed, the view does its job (200), and the
    job it queued finds the event done when a worker comes back (``workers``)."""
    handoff = {"WORKER_HANDOFF_TIMEOUT": 2}
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, **handoff}

    def alice() -> dict[str, Any]:
        return make_event("subscription.updated", {"subscription": seed.ALICE_SUBSCRIPTION})

    # No scheduler: nothing here is deferred, and a SIGKILLed scheduler would hold its lock.
    worker = start_worker(backend, nomos.base_url, scheduler=False, **handoff)
    successor = None
    try:
        # Until the worker polls, the view processes each delivery itself (200); then 202.
        answers: list[int] = []
        wait_until(lambda: answers.append(post_event(Client(), alice()).status_code)
                   or answers[-1] == 202, "a worker to take a delivery")
        assert set(answers[:-1]) <= {200}, answers
        wait_until(lambda: not WebhookEvent.objects.exclude(status="processed").exists(),
                   "the worker to process it")
        fetched = nomos.count(SUB_GET)
        assert fetched == len(answers)  # each event once, by the view or the worker
        kill(worker)
        time.sleep(2.5)  # the dead worker's last stamp is older than the handoff timeout
        second = alice()
        response = post_event(Client(), second)
        assert (response.status_code, response.content) == (200, b"processed\n")
        assert nomos.count(SUB_GET) == fetched + 1
        successor = start_worker(backend, nomos.base_url, scheduler=False, **handoff)
        wait_until(lambda: job_outcomes(backend, second["id"]), "the queued job to run")
    finally:
        for process in (worker, successor):
            if process is not None:
                stop(process)
    # The job left in the queue found the event done: nothing processed twice.
    assert job_outcomes(backend, second["id"]) == ["busy"]
    stored = WebhookEvent.objects.get(event_id=second["id"])
    assert (stored.status, stored.attempts, stored.deliveries) == ("processed", 1, 1)
    assert nomos.count(SUB_GET) == fetched + 1
