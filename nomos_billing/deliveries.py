"""A webhook delivery, once verified: parsed, recorded once, handed over; and the outcome the
webhook view answers by (``webhooks.ANSWERS`` maps each to its status code).

- ``parse_delivery`` reads the signed body as an event envelope;
- ``record_event`` stores an envelope once (the unique ``event_id`` decides, not memory);
  ``record_delivery`` is the webhook view's version: one statement that stores a new event
  already claimed by this delivery, or counts a redelivery and returns the stored row;
- ``hand_over`` gives the recorded event to its processing (``processing``) or to a task
  worker (``tasks``, ``workers``), and says what came of it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal, cast

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router
from django.db.models import F
from django.utils import timezone

from . import lifecycle, tasks, workers
from .exceptions import EnqueueError, InvalidEvent
from .jsonsafe import problem
from .models import WebhookEvent
from .processing import Result, outcome_without_work, process_event
from .signals import webhook_received

logger = logging.getLogger("nomos_billing.deliveries")

Status = WebhookEvent.Status

#: What became of a delivery; ``webhooks.ANSWERS`` says how each is answered.
Outcome = Literal[
    # verified and recorded
    "processed",
    "ignored",
    "already processed",
    "failed",
    "retry",
    "busy",
    "queued",
    "queue unavailable",
    # not recorded
    "test event",
    "rejected",
    "too large",
    "unreadable",
    "unconfigured",
    "database unavailable",
]


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    #: The reason, for an outcome answered with it (a rejection).
    detail: str = ""
    #: Seconds the sender should wait before redelivering, where we know.
    retry_after: int | None = None


def _reject_constant(name: str) -> Any:
    # json accepts NaN/Infinity, which PostgreSQL's jsonb does not.
    raise ValueError(f"{name} is not valid JSON")


def parse_delivery(body: bytes) -> dict[str, Any] | None:
    """The signed body as an event envelope, or ``InvalidEvent``; None for the dashboard's
    "send test event", which may come without an id: there is nothing to deduplicate or
    process, and a made-up id would only clutter the event log.

    Signed, so Nomos (or whoever holds the secret) sent it; a body that cannot be stored would
    fail on PostgreSQL on every redelivery, so it is refused the same way on every database.
    """
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise InvalidEvent("body is not JSON") from None
    unstorable = problem(data)
    if unstorable:
        raise InvalidEvent(f"body holds {unstorable}, which cannot be stored")
    if isinstance(data, dict) and data.get("topic") == "test.event" and not data.get("id"):
        return None
    parse_envelope(data)
    return cast(dict[str, Any], data)


def parse_envelope(data: Any) -> tuple[str, str]:
    """``(event_id, topic)`` of a Nomos event envelope, or ``InvalidEvent``."""
    if not isinstance(data, dict):
        raise InvalidEvent("the body is not a JSON object")
    event_id, topic = data.get("id"), data.get("topic")
    if not isinstance(topic, str) or not topic or len(topic) > 64:
        raise InvalidEvent("the event has no valid topic")
    if not isinstance(event_id, str) or not event_id or len(event_id) > 64:
        raise InvalidEvent("the event has no valid id")
    return event_id, topic


def record_event(
    data: dict[str, Any], *, secret_index: int | None = None
) -> tuple[WebhookEvent, bool]:
    """Store the envelope unless its id is already stored; ``(event, created)``.

    ``webhook_received`` is sent for a new event only. ``get_or_create`` handles the race of
    two first deliveries: the loser's INSERT hits the unique constraint and it reads the row.
    """
    event_id, topic = parse_envelope(data)
    event, created = WebhookEvent.objects.get_or_create(
        event_id=event_id,
        defaults={"topic": topic, "payload": data, "secret_index": secret_index},
    )
    if created:
        _announce(event)
    return event, created


def record_delivery(
    data: dict[str, Any], *, secret_index: int | None = None, claim: bool = True
) -> tuple[WebhookEvent, bool]:
    """Record one webhook delivery; ``(event, created)``.

    A new event is stored, claimed by this delivery when ``claim`` (status ``processing``,
    attempt 1: pass ``created`` events to ``process_event(event, claimed=True)``), or already
    finished when its topic needs no work (``outcome_without_work``); a known one
    has its ``deliveries`` counted and comes back as stored. On PostgreSQL and SQLite this is
    one ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``: the unique ``event_id`` decides
    between concurrent first deliveries, and a redelivery of a finished event costs that one
    statement. Other databases take the ORM's path (a few more statements, same outcome).
    """
    event_id, topic = parse_envelope(data)
    new = WebhookEvent(event_id=event_id, topic=topic, payload=data, secret_index=secret_index)
    if claim:
        now, outcome = timezone.now(), outcome_without_work(topic)
        if outcome is not None:
            # Nothing to do for this topic: stored finished, in the same one statement.
            new.status, new.processed_at, new.attempts = outcome, now, 1
        else:
            new.status, new.claimed_at, new.attempts = str(Status.PROCESSING), now, 1
    alias = router.db_for_write(WebhookEvent)
    if connections[alias].vendor in ("postgresql", "sqlite"):
        event = _upsert_counting_delivery(new, alias)
        # A conflict always adds one to a stored count of at least one.
        created = event.deliveries == 1
    else:
        event, created = _get_or_create_counting_delivery(new)
    if created:
        _announce(event)
    return event, created


def _upsert_counting_delivery(new: WebhookEvent, alias: str) -> WebhookEvent:
    connection = connections[alias]
    quote = connection.ops.quote_name
    meta = WebhookEvent._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    # pre_save fills auto_now(_add); get_db_prep_save adapts JSON and datetimes per backend.
    values = [f.get_db_prep_save(f.pre_save(new, True), connection) for f in fields]
    # Concrete fields always have a column; the stubs allow None (and relations) for any field.
    column = {f.name: quote(cast(str, f.column)) for f in meta.concrete_fields}
    table, count = quote(meta.db_table), column["deliveries"]
    # Only quoted names of our own model are formatted in; every value is a parameter.
    sql = (
        f"INSERT INTO {table} ({', '.join(column[f.name] for f in fields)}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(fields))}) "
        f"ON CONFLICT ({column['event_id']}) "
        f"DO UPDATE SET {count} = {table}.{count} + 1 "
        f"RETURNING {', '.join(column.values())}"
    )
    # raw() turns the returned row into a model instance with the fields' own converters.
    return next(iter(WebhookEvent.objects.db_manager(alias).raw(sql, values)))


def _get_or_create_counting_delivery(new: WebhookEvent) -> tuple[WebhookEvent, bool]:
    defaults = {
        f.name: getattr(new, f.name)
        for f in WebhookEvent._meta.concrete_fields
        if not f.primary_key and f.name != "event_id"
    }
    event, created = WebhookEvent.objects.get_or_create(event_id=new.event_id, defaults=defaults)
    if not created:
        WebhookEvent.objects.filter(pk=event.pk).update(deliveries=F("deliveries") + 1)
        event.deliveries += 1
    return event, created


def _announce(event: WebhookEvent) -> None:
    # Informational: a failing receiver must not turn into a lost delivery.
    for receiver, response in webhook_received.send_robust(sender=WebhookEvent, event=event):
        if isinstance(response, Exception):
            logger.error(
                "webhook_received receiver %r failed for event %s",
                receiver,
                event.event_id,
                exc_info=response,
            )


# -- handing over ---------------------------------------------------------------------------------


def hand_over(event: WebhookEvent, created: bool, *, queued: bool) -> Answer:
    """Process the recorded event here, or (``queued``: ``TASK_BACKEND`` set) enqueue it for a
    worker that is alive; a new event arrives already claimed (or finished) when not queued."""
    if not created and event.status in lifecycle.FINISHED:
        return Answer("already processed")
    if queued:
        return _enqueue(event, created)
    if created and event.status != Status.PROCESSING:  # finished when recorded
        return answer(Result(event, claimed=True))
    return answer(process_event(event, claimed=created))


def _enqueue(event: WebhookEvent, created: bool) -> Answer:
    if not created and not lifecycle.needs_enqueue(event):
        if event.status == Status.PROCESSING:
            return _busy(event)  # in a worker's hands, not merely queued
        return _handed_over(event)  # its job waits in the queue
    try:
        tasks.enqueue(event.event_id)
    except (EnqueueError, ImproperlyConfigured) as exc:
        # ImproperlyConfigured: TASK_BACKEND names no backend (check W030 says so); keep
        # the event and let Nomos redeliver once the settings are fixed.
        logger.error("Could not enqueue Nomos webhook event %s: %s", event.event_id, exc)
        WebhookEvent.objects.enqueue_failed(event, exc)
        return Answer("queue unavailable")
    return _handed_over(event)


def _handed_over(event: WebhookEvent) -> Answer:
    alias = tasks.backend_alias()
    if alias is None or workers.handed_over(event, alias):
        return Answer("queued")
    # "queued" now would promise a worker nobody runs: do the worker's job, as inline would.
    workers.report_absent(alias, event.event_id)
    return answer(process_event(event))


def answer(result: Result) -> Answer:
    """What a processing of the delivered event came to."""
    event = result.event
    if not result.claimed:
        if event.status in lifecycle.FINISHED:
            return Answer("already processed")
        return _busy(event)
    if event.status == Status.PROCESSED:
        return Answer("processed")
    if event.status == Status.IGNORED:
        return Answer("ignored")
    if result.retry:
        return Answer("retry", retry_after=result.retry_after)
    return Answer("failed")


def _busy(event: WebhookEvent) -> Answer:
    """Another worker holds the event's claim: never a 2xx.

    A 2xx would tell Nomos the event is delivered, yet the worker holding the claim may die
    before it finishes, and whether its own delivery ever gets an answer is not ours to know.
    So Nomos keeps redelivering until one answer says processed; by then the event is
    processed, failed (reprocessed) or its claim stale (taken over). Not a 5xx either: nothing
    is broken. The sender should come back when the claim would go stale.
    """
    return Answer("busy", retry_after=lifecycle.seconds_until_stale(event))
