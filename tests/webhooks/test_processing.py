"""``processing``: the envelope parser, claiming and the outcome of each kind of event, called
directly on stored ``WebhookEvent`` rows (the view's own tests go through HTTP)."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from nomos_billing import lifecycle, processing, signals
from nomos_billing.deliveries import parse_envelope, record_delivery, record_event
from nomos_billing.exceptions import InvalidEvent
from nomos_billing.models import NomosSubscription, WebhookEvent
from nomos_billing.processing import process_event
from nomos_billing.sandbox import Fault, seed
from nomos_billing.testing import make_event
from tests.concurrency import is_claim, meet_at

pytestmark = pytest.mark.django_db
SUB_GET = "GET /subscriptions/{id}"


def stored(topic: str = "subscription.created", context: dict[str, Any] | None = None,
           **fields: Any) -> WebhookEvent:
    if context is None:
        context = {"subscription": seed.ALICE_SUBSCRIPTION}
    event = make_event(topic, context)
    return WebhookEvent.objects.create(event_id=event["id"], topic=topic, payload=event,
                                       **fields)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "not a JSON object"),
        ([], "not a JSON object"),
        ({}, "no valid topic"),
        ({"id": "evt_1"}, "no valid topic"),
        ({"id": "evt_1", "topic": ""}, "no valid topic"),
        ({"id": "evt_1", "topic": "t" * 65}, "no valid topic"),
        ({"topic": "invoice.paid"}, "no valid id"),
        ({"id": None, "topic": "invoice.paid"}, "no valid id"),
        ({"id": ["evt_1"], "topic": "invoice.paid"}, "no valid id"),
    ],
)
def test_parse_envelope_rejects_what_is_not_an_event(data, message):
    with pytest.raises(InvalidEvent, match=message):
        parse_envelope(data)


def test_parse_envelope_returns_id_and_topic():
    assert parse_envelope({"id": "evt_1", "topic": "invoice.paid", "x": 1}) == (
        "evt_1", "invoice.paid")


@pytest.mark.parametrize(
    ("topic", "handler"),
    [
        ("subscription.created", processing.sync_subscription),
        ("subscription.some_future_topic", processing.sync_subscription),
        ("invoice.paid", processing.acknowledge),
        ("meter_order.blocked", processing.acknowledge),
        ("test.event", processing.acknowledge),
        ("test.other", None),
        ("plan.created", None),
        ("subscriptionx.created", None),
    ],
)
def test_handler_is_chosen_by_topic_or_its_prefix(topic, handler):
    assert processing.get_handler(topic) is handler


def test_record_event_stores_once_and_announces_once(connect_receiver):
    seen = []
    connect_receiver(signals.webhook_received, lambda **kw: seen.append(kw["event"].event_id))
    event = make_event("invoice.paid")
    first, created_first = record_event(event, secret_index=1)
    second, created_second = record_event(event, secret_index=0)
    assert (created_first, created_second) == (True, False)
    assert first.pk == second.pk and second.secret_index == 1
    assert seen == [event["id"]]


@pytest.mark.parametrize("path", ["one statement", "portable ORM path"])
def test_record_delivery_stores_and_claims_once_then_counts(path, monkeypatch, connect_receiver):
    if path == "portable ORM path":
        # The path of databases without INSERT ... ON CONFLICT ... RETURNING (not PostgreSQL,
        # not SQLite): the same outcome in a few more statements.
        monkeypatch.setattr(connections["default"], "vendor", "another")
    seen = []
    connect_receiver(signals.webhook_received, lambda **kw: seen.append(kw["event"].event_id))
    # A topic that needs processing: one that needs none is stored finished instead.
    data = make_event("subscription.created", {"subscription": "sub_1"})
    first, created_first = record_delivery(data, secret_index=1)
    again = {**data, "context": {"changed": True}}
    second, created_second = record_delivery(again, secret_index=0)
    third, created_third = record_delivery(data, secret_index=0, claim=False)
    assert (created_first, created_second, created_third) == (True, False, False)
    assert (first.status, first.attempts, first.deliveries) == ("processing", 1, 1)
    assert first.claimed_at is not None
    assert (second.pk, second.deliveries, third.deliveries) == (first.pk, 2, 3)
    row = WebhookEvent.objects.get()
    # The first delivery's envelope and secret are kept; later ones only count.
    assert (row.payload, row.secret_index, row.topic) == (data, 1, "subscription.created")
    assert (row.status, row.attempts, row.deliveries) == ("processing", 1, 3)
    assert seen == [data["id"]]


@pytest.mark.parametrize("path", ["one statement", "portable ORM path"])
def test_record_delivery_without_claim_leaves_the_event_received(path, monkeypatch):
    if path == "portable ORM path":
        monkeypatch.setattr(connections["default"], "vendor", "another")
    event, created = record_delivery(make_event("invoice.paid"), claim=False)
    assert created
    assert (event.status, event.attempts, event.claimed_at, event.deliveries) == (
        "received", 0, None, 1)


def test_failing_webhook_received_receiver_does_not_lose_the_event(caplog, connect_receiver):
    def broken(**kwargs):
        raise RuntimeError("receiver bug")

    connect_receiver(signals.webhook_received, broken)
    event, created = record_event(make_event("invoice.paid"))
    assert created and WebhookEvent.objects.filter(pk=event.pk).exists()
    assert "receiver" in caplog.text


def test_processed_event_is_not_claimed_again_unless_forced(nomos):
    event = stored()
    assert process_event(event).claimed
    again = process_event(event)
    assert (again.claimed, again.status) == (False, "processed")
    assert nomos.count(SUB_GET) == 1
    forced = process_event(event, force=True)
    assert (forced.claimed, forced.status, forced.event.attempts) == (True, "processed", 2)
    assert nomos.count(SUB_GET) == 2


def test_force_never_takes_a_fresh_claim(nomos):
    event = stored(status="processing", claimed_at=timezone.now())
    result = process_event(event, force=True)
    assert (result.claimed, result.status) == (False, "processing")
    assert nomos.count(SUB_GET) == 0


@pytest.mark.parametrize(
    ("age", "claimed"),
    [(lifecycle.claim_timeout() - timedelta(seconds=5), False),
     (lifecycle.claim_timeout() + timedelta(seconds=5), True)],
)
def test_claim_is_taken_over_only_when_stale(age, claimed, nomos):
    event = stored(status="processing", claimed_at=timezone.now() - age)
    assert process_event(event).claimed is claimed


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("fields", "force"),
    [({}, False),
     ({"status": "failed"}, False),
     ({"status": "processing"}, False),  # claimed_at set below: a stale claim
     ({"status": "processed"}, True)],
    ids=["received", "failed", "stale claim", "processed, forced"],
)
def test_concurrent_claims_of_one_event_have_exactly_one_winner(fields, force):
    """Eight workers reach the claim at the same moment (on SQLite too: a file in WAL mode)."""
    if fields.get("status") == "processing":
        fields = {**fields, "claimed_at": timezone.now() - lifecycle.claim_timeout() * 2}
    event = stored(**fields)
    workers = 8
    barrier = threading.Barrier(workers)
    won: list[bool] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with meet_at(barrier, is_claim):
                stored = WebhookEvent.objects.get(pk=event.pk)
                won.append(WebhookEvent.objects.claim(stored, force=force))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert not barrier.broken, "the workers did not all reach the claiming UPDATE"
    assert sorted(won) == [False] * (workers - 1) + [True]
    event.refresh_from_db()
    assert (event.status, event.attempts) == ("processing", 1)


def test_unknown_topic_is_ignored_without_signal(connect_receiver):
    processed = connect_receiver(signals.webhook_processed)
    result = process_event(stored("plan.created", {}))
    assert (result.claimed, result.status, result.retry) == (True, "ignored", False)
    assert result.event.processed_at is not None
    assert not processed.called


def test_outage_is_a_retryable_failure_with_retry_after(nomos, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "MAX_RETRIES": 0}
    nomos.add_fault(SUB_GET, Fault(status=503, retry_after=7), times=None)
    result = process_event(stored())
    assert (result.status, result.retry, result.retry_after) == ("failed", True, 7)
    assert result.event.attempts == 1 and result.event.claimed_at is None
    assert "503" in result.event.last_error


def test_a_failure_is_logged_once_naming_the_event_topic_and_why(nomos, settings, caplog):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "MAX_RETRIES": 0}
    nomos.add_fault(SUB_GET, Fault(status=503), times=None)
    event = stored()
    with caplog.at_level(logging.WARNING, logger="nomos_billing.processing"):
        process_event(event)
    [line] = [r.getMessage() for r in caplog.records if r.name == "nomos_billing.processing"]
    prefix = f"Webhook event {event.event_id} (subscription.created) failed: Nomos is unavailable: "
    assert line.startswith(prefix)
    # Then the error itself, as stored on the row: what Nomos answered.
    assert "503" in line[len(prefix):]


def test_not_found_is_a_final_failure_past_the_window(nomos):
    event = stored(context={"subscription": "sub_gone"})
    WebhookEvent.objects.filter(pk=event.pk).update(received_at=timezone.now() - timedelta(hours=2))
    event.refresh_from_db()
    result = process_event(event)
    assert (result.status, result.retry) == ("failed", False)
    assert result.event.last_error.startswith("NomosAPIError: GET /subscriptions/sub_gone")


def test_not_found_inside_the_window_is_a_retryable_failure(nomos):
    result = process_event(stored(context={"subscription": "sub_new"}))
    assert (result.status, result.retry) == ("failed", True)
    assert result.event.last_error.startswith("NotReadableYet: ")


def test_missing_credentials_are_a_retryable_failure(settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "CLIENT_SECRET": ""}
    result = process_event(stored())
    assert (result.status, result.retry) == ("failed", True)
    assert "CLIENT_SECRET" in result.event.last_error


def test_malformed_subscription_from_nomos_is_a_final_failure(monkeypatch, nomos):
    monkeypatch.setattr("nomos_billing.client.NomosClient.get_subscription",
                        lambda self, sub_id: {"id": sub_id})
    result = process_event(stored())
    assert (result.status, result.retry) == ("failed", False)
    assert "without customer" in result.event.last_error


def test_crashing_receiver_marks_failed_and_raises(nomos, connect_receiver):
    def broken(**kwargs):
        raise ValueError("boom")

    event = stored()
    connect_receiver(signals.webhook_processed, broken)
    with pytest.raises(ValueError, match="boom"):
        process_event(event)
    signals.webhook_processed.disconnect(broken)  # off for the retry below
    event.refresh_from_db()
    assert (event.status, event.last_error, event.processed_at) == (
        "failed", "ValueError: boom", None)
    # The rows were committed before the signal; processing again converges.
    assert process_event(event).status == "processed"
    assert NomosSubscription.objects.count() == 1


def test_webhook_processed_sees_the_processed_event(nomos, connect_receiver):
    seen = []
    connect_receiver(signals.webhook_processed,
                     lambda sender, event, **kw: seen.append((sender, event.status)))
    process_event(stored())
    assert seen == [(WebhookEvent, "processed")]


def test_error_text_is_truncated():
    event = stored("invoice.paid", {})
    WebhookEvent.objects.filter(pk=event.pk).update(status="processing")
    WebhookEvent.objects.finish(event, "failed", lifecycle.error_text(ValueError("x" * 5000)))
    event.refresh_from_db()
    assert len(event.last_error) == lifecycle.MAX_ERROR_LENGTH
