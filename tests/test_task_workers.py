"""Webhooks processed by real task workers: the database backend's ``db_worker`` and RQ's
``rqworker``, each a separate process started by the test, on PostgreSQL (the worker and the
suite share the test database) and Redis.

The workers run in burst mode after the deliveries were answered, so the sandbox's counters
prove that no request called Nomos, and the test ends when the queue is empty, not on a timer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from nomos_billing import tasks
from nomos_billing.models import NomosSubscription, WebhookEvent
from nomos_billing.sandbox import seed
from nomos_billing.testing import make_event, post_event

ROOT = Path(__file__).resolve().parent.parent
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

        django_rq.get_queue("default").empty()
    settings.TASKS = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"},
                      alias: BACKENDS[alias]}
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": alias}
    return alias


def run_workers(alias: str, sandbox_url: str, count: int = 2) -> list[str]:
    """Start ``count`` worker processes at once, each draining the queue and exiting."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.worker_settings",
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:"
                        f"{db['PORT'] or 5432}/{db['NAME']}",
        "NOMOS_TEST_API_BASE_URL": sandbox_url,
        "NOMOS_TEST_TASK_BACKEND": alias,
    }
    if alias == "db":
        command = ["db_worker", "--batch", "--backend", "db", "--no-startup-delay",
                   "--interval", "0.1"]
    else:
        command = ["rqworker", "default", "--burst", "--job-class", "django_tasks_rq.Job"]
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
        pytest.skip("the database backend's queue is the database itself: when it is down, "
                    "recording fails first")
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
