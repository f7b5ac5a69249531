"""Recording and processing webhook events, exactly once per event id.

The view, ``nomos_replay`` and the admin's "Process again" share these functions:

- ``record_event`` stores the envelope once (the unique ``event_id`` decides, not memory);
  ``record_delivery`` is the webhook view's version: one statement that stores a new event
  already claimed by this delivery, or counts a redelivery and returns the stored row;
- ``process_event`` claims the row with one conditional UPDATE, runs the topic's handler and
  records the outcome. Only the worker whose UPDATE changed the row processes it; every other
  delivery of the same event sees that it is done or in progress. A single UPDATE is atomic on
  SQLite and PostgreSQL alike, and unlike ``select_for_update`` it holds no lock (nor an open
  transaction) while we wait for Nomos over the network.

Handlers fetch the current state from Nomos (the context carries ids only) and store it, so
running one twice, or out of order, converges on the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from django.db import connections, router, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from . import api_rate, budget, fetches, sync
from .conf import nomos_settings
from .exceptions import NomosAPIError, NomosConfigurationError, NomosUnavailable
from .models import WebhookEvent
from .signals import webhook_processed, webhook_received

logger = logging.getLogger("nomos_billing.processing")

Status = WebhookEvent.Status


def claim_timeout() -> timedelta:
    """A claim older than this was left by a worker that died mid-processing; the next delivery
    (or ``nomos_replay``) takes it over. ``CLAIM_TIMEOUT`` (default 60 s) is above
    ``WEBHOOK_BUDGET``, which bounds every processing (``process_event`` opens that budget), so
    a slow worker is never doubled, and a dead one's event waits about a minute, not five."""
    return timedelta(seconds=nomos_settings.CLAIM_TIMEOUT)


def stuck_condition(now: datetime | None = None) -> Q:
    """The one definition of "stuck": ``processing`` with a claim older than the claim timeout,
    which only a worker that died leaves behind. ``WebhookEvent.objects.stuck()``, the claim,
    the admin, the health page and the takeover (``takeover``) all read it from here."""
    return Q(status=Status.PROCESSING, claimed_at__lt=(now or timezone.now()) - claim_timeout())


def stuck_events() -> QuerySet[WebhookEvent]:
    """Events whose processing claim is older than the claim timeout (a dead worker's)."""
    return WebhookEvent.objects.stuck()


MAX_ERROR_LENGTH = 2000


class InvalidEvent(ValueError):
    """The envelope or its context is not something we can process; retrying will not help."""


class NotReadableYet(Exception):
    """Nomos answered 404 for the subscription of a fresh ``subscription.*`` event.

    Nomos fires ``subscription.created`` right after checkout, and a read may not find the new
    subscription yet. Inside ``NOT_FOUND_RETRY_WINDOW`` (counted from our first receipt of the
    event) the event stays ``failed`` and the webhook answers 503 so that Nomos redelivers;
    after it, the 404 is final (200, ``failed``, kept for ``nomos_replay``).
    """


@dataclass(frozen=True)
class Result:
    event: WebhookEvent
    #: True when this call did the processing and recorded its outcome; False when it was done
    #: or in progress elsewhere, or this call's claim went stale and was taken over meanwhile.
    claimed: bool
    #: Failed, and a later delivery may succeed (Nomos down, credentials being fixed).
    retry: bool = False
    retry_after: int | None = None
    #: Failed because Nomos cannot read the subscription yet (``NotReadableYet``): a matter of
    #: this one event, not an outage, so a replay goes on with the next event.
    waiting: bool = False

    @property
    def status(self) -> str:
        return self.event.status


# -- the envelope -------------------------------------------------------------------------------


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


# -- handlers -----------------------------------------------------------------------------------


def sync_subscription(event: WebhookEvent) -> str:
    context = event.payload.get("context") or {}
    subscription_id = context.get("subscription") if isinstance(context, dict) else None
    if not isinstance(subscription_id, str) or not subscription_id:
        raise InvalidEvent(f"{event.topic} event without context.subscription")
    lead_id = context.get("lead")
    # Fetch before any transaction: no database connection sits idle in a transaction while
    # Nomos answers. upsert_from_subscription draws its own atomic blocks.
    try:
        # Shared with the other events waiting for this subscription (``fetches``).
        data = fetches.subscription(subscription_id)
    except NomosAPIError as exc:
        if exc.is_not_found and _inside_not_found_window(event):
            raise NotReadableYet(
                f"Nomos does not find subscription {subscription_id} yet; waiting for a redelivery"
            ) from exc
        raise
    try:
        sync.upsert_from_subscription(
            data, lead_id=lead_id if isinstance(lead_id, str) and lead_id else None
        )
    except ValueError as exc:  # malformed data from Nomos: a redelivery fetches the same
        raise InvalidEvent(str(exc)) from exc
    return str(Status.PROCESSED)


def _inside_not_found_window(event: WebhookEvent) -> bool:
    window = nomos_settings.NOT_FOUND_RETRY_WINDOW
    if window <= 0:
        return False
    received = event.received_at or timezone.now()
    return timezone.now() - received < timedelta(seconds=window)


def acknowledge(event: WebhookEvent) -> str:
    """Topics we keep for the site (``webhook_processed``) but do not sync ourselves."""
    return str(Status.PROCESSED)


#: Handler by topic, or by the part before the first dot. Anything else is ``ignored``.
HANDLERS: dict[str, Callable[[WebhookEvent], str]] = {
    "subscription": sync_subscription,
    "invoice": acknowledge,
    "meter_order": acknowledge,
    "test.event": acknowledge,
}


def get_handler(topic: str) -> Callable[[WebhookEvent], str] | None:
    return HANDLERS.get(topic) or HANDLERS.get(topic.split(".", 1)[0])


def outcome_without_work(topic: str) -> str | None:
    """The final status of a new event that needs nothing done: ``ignored`` (no handler), or
    ``processed`` for an acknowledge-only topic while no receiver listens for
    ``webhook_processed`` (a receiver gets the event through ``process_event``, inside its
    transaction). None when the event must be processed."""
    handler = get_handler(topic)
    if handler is None:
        return str(Status.IGNORED)
    if handler is acknowledge and not webhook_processed.has_listeners(WebhookEvent):
        return str(Status.PROCESSED)
    return None


# -- claiming and processing ----------------------------------------------------------------------


def claim(event: WebhookEvent, *, force: bool = False, takeover: bool = False) -> bool:
    """Take the event for processing with one conditional UPDATE; True if this call won.

    Claimable: received (recorded, never processed), failed (a redelivery or replay), or a
    stale claim. ``force`` (replay, admin) also takes processed and ignored events, but never
    one that is being processed right now. ``takeover`` takes a stale claim only: a failed
    event waits for its redelivery or its planned retry, not for whoever happens to pass by.
    """
    now = timezone.now()
    claimable = stuck_condition(now)
    if not takeover:
        claimable |= Q(status__in=[Status.RECEIVED, Status.FAILED])
    if force:
        claimable |= Q(status__in=[Status.PROCESSED, Status.IGNORED])
    won = WebhookEvent.objects.filter(claimable, pk=event.pk).update(
        status=Status.PROCESSING, claimed_at=now, attempts=F("attempts") + 1, updated_at=now
    )
    if won:
        # The claim's token: ``_finish`` records an outcome only while the row still holds it.
        event.status, event.claimed_at = str(Status.PROCESSING), now
    return bool(won)


def _error_text(exc: BaseException) -> str:
    # Our exceptions never carry secrets (see exceptions.py); others are named by type too.
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]


def _finish(event: WebhookEvent, status: str, error: str = "") -> bool:
    """Record the outcome; True when this call did (it held the claim). The instance gets the
    written fields, so a caller that knows the rest of the row needs no read-back."""
    now = timezone.now()
    fields: dict[str, Any] = {
        "status": status,
        "claimed_at": None,
        "last_error": error,
        "updated_at": now,
    }
    if status != Status.FAILED:
        fields["processed_at"] = now
    # Conditional: only the claim holder records an outcome. ``claimed_at`` is the claim's
    # token: a worker whose claim went stale and was taken over (a new ``claimed_at``), or put
    # back in the queue, must not write its late outcome over the new holder's.
    updated = WebhookEvent.objects.filter(
        pk=event.pk, status=Status.PROCESSING, claimed_at=event.claimed_at
    ).update(**fields)
    if updated:
        for name, value in fields.items():
            setattr(event, name, value)
    return bool(updated)


def process_event(
    event: WebhookEvent,
    *,
    force: bool = False,
    claimed: bool = False,
    takeover: bool = False,
    on_claim: Callable[[], None] | None = None,
    on_claim_waiting: Callable[[WebhookEvent], None] | None = None,
) -> Result:
    """Process a stored event unless it is done or being processed elsewhere.

    Outcomes are stored on the row: ``processed`` (and ``webhook_processed`` sent), ``ignored``
    (no handler for the topic) or ``failed`` with ``last_error``. Errors from Nomos are caught
    and reported in the result (``retry`` for outages); any other exception is recorded and
    raised again, so that a bug shows up as a 500 and Nomos redelivers after the fix.

    ``claimed``: the caller already holds the claim and ``event`` is the row as stored, i.e. a
    new event from ``record_delivery``; then no claim UPDATE and no read-back are needed.
    ``takeover``: only a stuck event is claimed (``claim``). ``on_claim`` runs once this call
    holds the claim, before any work (a task worker schedules its own watchdog there).

    A ``subscription.*`` event claimed here (not a delivery's own new event) also claims the
    subscription's other queued events (``claim_waiting``; ``on_claim_waiting`` runs for each)
    and processes them after it with the one fetch (``fetches``): each is still claimed once
    and finished once.
    """
    if not claimed and not claim(event, force=force, takeover=takeover):
        event.refresh_from_db()
        return Result(event, claimed=False)
    if on_claim is not None:
        on_claim()
    # A delivery's own new event (``claimed``) skips the look: events wait in a queue.
    batch = [] if claimed else claim_waiting(event)
    for other in batch:
        if on_claim_waiting is not None:
            on_claim_waiting(other)
    try:
        with fetches.shared():
            result = _process_claimed(event, exact=claimed)
            for other in batch:
                _process_claimed(other, exact=False)
    except BaseException as exc:
        # A bug (re-raised below): the events claimed with this one must not stay claimed.
        for other in batch:
            _finish(other, str(Status.FAILED), _error_text(exc))
        raise
    return result


#: The most queued events of one subscription that one processing takes along.
WAITING_BATCH = 100


def claim_waiting(event: WebhookEvent) -> list[WebhookEvent]:
    """Claim the queued (``received``) events of ``event``'s subscription, each with the
    conditional UPDATE of ``claim``; the ones this call won, oldest first."""
    if get_handler(event.topic) is not sync_subscription:
        return []
    context = event.payload.get("context") if isinstance(event.payload, dict) else None
    subscription_id = context.get("subscription") if isinstance(context, dict) else None
    if not isinstance(subscription_id, str) or not subscription_id:
        return []
    candidates = (
        WebhookEvent.objects.filter(
            status=Status.RECEIVED,
            topic__startswith="subscription",
            payload__context__subscription=subscription_id,
        )
        .exclude(pk=event.pk)
        .order_by("received_at")[:WAITING_BATCH]
    )
    return [
        other
        for other in candidates
        if get_handler(other.topic) is sync_subscription and claim(other)
    ]


def _process_claimed(event: WebhookEvent, *, exact: bool) -> Result:
    """Run the handler of an event this call holds the claim of, and record the outcome.

    ``exact``: ``event`` is the row as stored (no read-back needed after finishing)."""
    # The claim's token: every outcome write requires the row to still carry it (_finish).
    token = event.claimed_at
    retry, retry_after, waiting = False, None, False
    try:
        handler = get_handler(event.topic)
        # One budget for the whole processing, whoever runs it (the webhook view, a replay, a
        # task worker): it ends before Nomos stops waiting, and before the claim goes stale.
        # Under Nomos' rate limit a webhook's fetch goes after clicks, before syncs.
        with budget.limit(nomos_settings.WEBHOOK_BUDGET), api_rate.priority("webhook"):
            status = handler(event) if handler is not None else str(Status.IGNORED)
        # A transaction only for the site's receivers: one that raises undoes "processed".
        announce = status == Status.PROCESSED and webhook_processed.has_listeners(WebhookEvent)
        with transaction.atomic() if announce else nullcontext():
            finished = _finish(event, status)
            if not (finished and exact):
                event.refresh_from_db()
            if announce and finished:
                # Inside the block: a receiver that raises undoes "processed", so the event
                # is failed and redelivered instead of silently lost for the site.
                webhook_processed.send(sender=WebhookEvent, event=event)
        # Not finished: our claim was taken over; the new holder's outcome is the event's.
        return Result(event, claimed=finished)
    except NomosUnavailable as exc:
        retry, retry_after = True, exc.retry_after
        finished = _fail(event, exc, "Nomos is unavailable")
    except NotReadableYet as exc:
        retry = waiting = True
        finished = _fail(event, exc, "the subscription is not readable at Nomos yet")
    except NomosAPIError as exc:
        # 401/403: credentials or scope, which an operator can fix while Nomos keeps
        # redelivering. 404 and other 4xx will answer the same on every redelivery.
        retry = exc.is_auth_failure
        finished = _fail(event, exc, "Nomos refused a request")
    except NomosConfigurationError as exc:
        retry = True
        finished = _fail(event, exc, "the Nomos settings are incomplete")
    except InvalidEvent as exc:
        finished = _fail(event, exc, "the event cannot be processed")
    except Exception as exc:
        # A receiver that raised rolled our outcome back, not the instance: the claim is ours.
        event.claimed_at = token
        _finish(event, str(Status.FAILED), _error_text(exc))
        raise
    if not (finished and exact):
        event.refresh_from_db()
    if not finished:
        # A late worker: no retry of its own either, the new holder decides.
        return Result(event, claimed=False)
    return Result(event, claimed=True, retry=retry, retry_after=retry_after, waiting=waiting)


def _fail(event: WebhookEvent, exc: Exception, why: str) -> bool:
    logger.warning("Webhook event %s (%s) failed: %s: %s", event.event_id, event.topic, why, exc)
    return _finish(event, str(Status.FAILED), _error_text(exc))
