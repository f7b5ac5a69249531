"""A fetch per subscription, not per event (``fetches``, ``processing.claim_waiting``): events
waiting for one subscription are answered by one ``GET /subscriptions/{id}``, and each is still
claimed and processed exactly once, on a task worker and inline."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections
from django.test import Client

from nomos_billing import api_rate, fetches, signals, tasks
from nomos_billing.client import get_client
from nomos_billing.models import WebhookEvent
from nomos_billing.sandbox import Fault, Sandbox, seed
from nomos_billing.testing import make_event, post_event

if not tasks.framework_available():
    pytest.skip("no tasks framework: Django 5.2 without the django-tasks backport",
                allow_module_level=True)

FRAMEWORK = "django.tasks" if tasks.task_backends.__class__.__module__.startswith(
    "django.") else "django_tasks"
SUB_GET = "GET /subscriptions/{id}"


def alice_events(n: int) -> list[dict[str, Any]]:
    topics = ("subscription.created", "subscription.confirmed", "subscription.activated")
    return [make_event(topics[i % 3], {"subscription": seed.ALICE_SUBSCRIPTION})
            for i in range(n)]


@pytest.fixture
def announced(connect_receiver: Any) -> list[str]:
    seen: list[str] = []

    def receiver(event: WebhookEvent, **kwargs: Any) -> None:
        seen.append(event.event_id)

    connect_receiver(signals.webhook_processed, receiver, sender=WebhookEvent)
    return seen


@pytest.fixture
def queued(nomos: Sandbox, settings: Any) -> Iterator[Any]:
    """TASK_BACKEND on a dummy backend (it keeps the jobs; the test plays the worker)."""
    settings.TASKS = {"default": {"BACKEND": f"{FRAMEWORK}.backends.immediate.ImmediateBackend"},
                      "nomos": {"BACKEND": f"{FRAMEWORK}.backends.dummy.DummyBackend"}}
    # The test plays the worker when it likes: a queue whose workers run on a schedule.
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "nomos",
                              "WORKER_HANDOFF_TIMEOUT": 0}
    backend = tasks.task_backends["nomos"]
    backend.clear()
    yield backend
    backend.clear()


def work(backend: Any) -> list[str]:
    """Run the queued jobs in order (not the deferred watchdogs)."""
    return [r.task.call(*r.args, **r.kwargs) for r in list(backend.results)
            if not r.kwargs.get("takeover")]


@pytest.mark.django_db
def test_ten_queued_events_of_one_subscription_cost_one_fetch_and_are_processed_once_each(
    queued: Any, nomos: Sandbox, client: Client, announced: list[str]
) -> None:
    events = alice_events(10)
    assert [post_event(client, e).status_code for e in events] == [202] * 10

    outcomes = work(queued)

    assert nomos.count(SUB_GET) == 1
    # The first job took the nine others along; their own jobs find them done.
    assert outcomes == ["processed"] + ["busy"] * 9
    rows = WebhookEvent.objects.order_by("received_at")
    assert [(r.event_id, r.status, r.attempts) for r in rows] == [
        (e["id"], "processed", 1) for e in events]
    assert sorted(announced) == sorted(e["id"] for e in events)
    # Every claim is watched, the ones taken along too: a worker killed mid-batch leaves
    # nothing stuck.
    watched = sorted(r.args[0] for r in queued.results if r.kwargs.get("takeover"))
    assert watched == sorted(e["id"] for e in events)


@pytest.mark.django_db
def test_only_queued_events_of_the_same_subscription_are_taken_along(
    queued: Any, nomos: Sandbox, client: Client
) -> None:
    alice = alice_events(2)
    acme = make_event("subscription.created", {"subscription": seed.ACME_CONSUMPTION})
    invoice = make_event("invoice.paid", {"subscription": seed.ALICE_SUBSCRIPTION,
                                          "invoice": "inv_1"})
    for event in (*alice, acme, invoice):
        post_event(client, event)
    failed = alice_events(1)[0]
    post_event(client, failed)
    WebhookEvent.objects.filter(event_id=failed["id"]).update(status="failed")

    tasks.process_webhook_event.call(alice[0]["id"])

    status = dict(WebhookEvent.objects.values_list("event_id", "status"))
    assert status[alice[1]["id"]] == "processed"
    # Another subscription, a topic that fetches nothing, and a failed event (it waits for
    # its own retry) stay as they were.
    assert (status[acme["id"]], status[invoice["id"]], status[failed["id"]]) == (
        "received", "received", "failed")
    assert nomos.count(SUB_GET) == 1


@pytest.mark.django_db
def test_a_failed_fetch_fails_the_whole_batch_for_a_retry(
    queued: Any, nomos: Sandbox, client: Client
) -> None:
    events = alice_events(3)
    for event in events:
        post_event(client, event)
    nomos.add_fault(SUB_GET, Fault(status=404), times=None)

    tasks.process_webhook_event.call(events[0]["id"])

    assert nomos.count(SUB_GET) == 1
    rows = WebhookEvent.objects.all()
    assert {(r.status, r.attempts) for r in rows} == {("failed", 1)}
    # Each is failed on its own: its queued job, or its redelivery, tries again.
    assert all("not find subscription" in r.last_error for r in rows)


@pytest.mark.django_db
def test_a_bug_while_processing_leaves_none_of_the_batch_claimed(
    queued: Any, nomos: Sandbox, client: Client, connect_receiver: Any
) -> None:
    events = alice_events(3)
    for event in events:
        post_event(client, event)

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("a bug in the site's receiver")

    connect_receiver(signals.webhook_processed, broken, sender=WebhookEvent)
    with pytest.raises(RuntimeError):
        tasks.process_webhook_event.call(events[0]["id"])

    assert set(WebhookEvent.objects.values_list("status", flat=True)) == {"failed"}


# -- inline: deliveries that arrive together -----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_ten_deliveries_arriving_together_share_the_fetch_that_waits_for_its_turn(
    nomos: Sandbox, settings: Any, announced: list[str]
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "API_RATE_LIMIT": 10}
    api_rate.reset()
    get_client().tokens.get()
    # Nomos said only what clicks need is left, for two seconds: webhooks wait for their turn.
    api_rate.observe(200, {"ratelimit-limit": "10", "ratelimit-remaining": "2",
                           "ratelimit-reset": "2"})
    events = alice_events(10)
    barrier = threading.Barrier(len(events))
    answers: list[int] = []
    errors: list[BaseException] = []

    def deliver(event: dict[str, Any]) -> None:
        try:
            barrier.wait(10)
            answers.append(post_event(Client(), event).status_code)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=deliver, args=(e,)) for e in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    api_rate.reset()

    assert errors == []
    assert answers == [200] * 10
    assert nomos.count(SUB_GET) == 1
    assert sorted(WebhookEvent.objects.values_list("status", "attempts")) == [
        ("processed", 1)] * 10
    assert sorted(announced) == sorted(e["id"] for e in events)


def test_a_fetch_that_went_out_is_not_joined(nomos: Sandbox, settings: Any) -> None:
    # The first fetch is on its way (slow) when the second event asks: that answer may predate
    # the second event, so it fetches again.
    nomos.add_fault(SUB_GET, Fault(latency=0.5))
    first = threading.Thread(target=fetches.subscription, args=(seed.ALICE_SUBSCRIPTION,))
    first.start()
    deadline = time.monotonic() + 5
    while nomos.count(SUB_GET) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fetches.subscription(seed.ALICE_SUBSCRIPTION)["id"] == seed.ALICE_SUBSCRIPTION
    first.join(5)
    assert nomos.count(SUB_GET) == 2


def test_within_one_processing_the_fetch_is_read_from_memory(nomos: Sandbox) -> None:
    with fetches.shared():
        one = fetches.subscription(seed.ALICE_SUBSCRIPTION)
        one["status"] = "changed by a caller"
        two = fetches.subscription(seed.ALICE_SUBSCRIPTION)
    three = fetches.subscription(seed.ALICE_SUBSCRIPTION)
    assert nomos.count(SUB_GET) == 2  # once inside the block, once after it
    assert two["status"] == three["status"] != "changed by a caller"
