"""Processing recorded webhook events, exactly once per event id.

The webhook view (through ``deliveries``), task workers, the takeover, ``nomos_replay`` and the
admin's "Process again" share ``process_event``: it claims the row, runs the topic's handler and
records the outcome, by the rules of ``lifecycle`` (claim, finish, stuck). Only the worker whose
claim changed the row processes it; every other delivery of the same event sees that it is done
or in progress. Recording deliveries is ``deliveries``' job.

Handlers fetch the current state from Nomos (the context carries ids only) and store it, so
running one twice, or out of order, converges on the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from . import api_rate, budget, fetches, sync
from .conf import nomos_settings
from .exceptions import (
    InvalidEvent,
    NomosAPIError,
    NomosConfigurationError,
    NomosUnavailable,
    NotReadableYet,
)
from .lifecycle import Status, error_text
from .models import WebhookEvent
from .signals import webhook_processed

logger = logging.getLogger("nomos_billing.processing")


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


# -- handlers -----------------------------------------------------------------------------------


def sync_subscription(event: WebhookEvent) -> Status:
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
    return Status.PROCESSED  # type: ignore[return-value]  # see lifecycle.Status


def _inside_not_found_window(event: WebhookEvent) -> bool:
    window = nomos_settings.NOT_FOUND_RETRY_WINDOW
    if window <= 0:
        return False
    received = event.received_at or timezone.now()
    return timezone.now() - received < timedelta(seconds=window)


def acknowledge(event: WebhookEvent) -> Status:
    """Topics we keep for the site (``webhook_processed``) but do not sync ourselves."""
    return Status.PROCESSED  # type: ignore[return-value]  # see lifecycle.Status


#: Handler by topic, or by the part before the first dot. Anything else is ``ignored``.
HANDLERS: dict[str, Callable[[WebhookEvent], Status]] = {
    "subscription": sync_subscription,
    "invoice": acknowledge,
    "meter_order": acknowledge,
    "test.event": acknowledge,
}


def get_handler(topic: str) -> Callable[[WebhookEvent], Status] | None:
    return HANDLERS.get(topic) or HANDLERS.get(topic.split(".", 1)[0])


def outcome_without_work(topic: str) -> Status | None:
    """The final status of a new event that needs nothing done: ``ignored`` (no handler), or
    ``processed`` for an acknowledge-only topic while no receiver listens for
    ``webhook_processed`` (a receiver gets the event through ``process_event``, inside its
    transaction). None when the event must be processed."""
    handler = get_handler(topic)
    if handler is None:
        return Status.IGNORED  # type: ignore[return-value]
    if handler is acknowledge and not webhook_processed.has_listeners(WebhookEvent):
        return Status.PROCESSED  # type: ignore[return-value]  # see lifecycle.Status
    return None


# -- claiming and processing ----------------------------------------------------------------------


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
    new event from ``deliveries.record_delivery``; then no claim UPDATE and no read-back are needed.
    ``takeover``: only a stuck event is claimed (``WebhookEvent.objects.claim``). ``on_claim``
    runs once this call holds the claim, before any work (a task worker schedules its own
    watchdog there).

    A ``subscription.*`` event claimed here (not a delivery's own new event) also claims the
    subscription's other queued events (``claim_waiting``; ``on_claim_waiting`` runs for each)
    and processes them after it with the one fetch (``fetches``): each is still claimed once
    and finished once.
    """
    if not claimed and not WebhookEvent.objects.claim(event, force=force, takeover=takeover):
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
            WebhookEvent.objects.finish(other, Status.FAILED, error_text(exc))
        raise
    return result


#: The most queued events of one subscription that one processing takes along.
WAITING_BATCH = 100


def claim_waiting(event: WebhookEvent) -> list[WebhookEvent]:
    """Claim the queued (``received``) events of ``event``'s subscription, each with the
    conditional UPDATE of ``WebhookEvent.objects.claim``; the ones this call won, oldest first."""
    if get_handler(event.topic) is not sync_subscription:
        return []
    context = event.payload.get("context") if isinstance(event.payload, dict) else None
    subscription_id = context.get("subscription") if isinstance(context, dict) else None
    if not isinstance(subscription_id, str) or not subscription_id:
        return []
    candidates = WebhookEvent.objects.queued_for(subscription_id).exclude(pk=event.pk)
    return [
        other
        for other in candidates[:WAITING_BATCH]
        if get_handler(other.topic) is sync_subscription and WebhookEvent.objects.claim(other)
    ]


def _process_claimed(event: WebhookEvent, *, exact: bool) -> Result:
    """Run the handler of an event this call holds the claim of, and record the outcome.

    ``exact``: ``event`` is the row as stored (no read-back needed after finishing)."""
    # The claim's token: every outcome write requires the row to still carry it (``finish``).
    token = event.claimed_at
    retry, retry_after, waiting = False, None, False
    try:
        handler = get_handler(event.topic)
        # One budget for the whole processing, whoever runs it (the webhook view, a replay, a
        # task worker): it ends before Nomos stops waiting, and before the claim goes stale.
        # Under Nomos' rate limit a webhook's fetch goes after clicks, before syncs.
        with budget.limit(nomos_settings.WEBHOOK_BUDGET), api_rate.priority("webhook"):
            status = handler(event) if handler is not None else Status.IGNORED
        # A transaction only for the site's receivers: one that raises undoes "processed".
        announce = status == Status.PROCESSED and webhook_processed.has_listeners(WebhookEvent)
        with transaction.atomic() if announce else nullcontext():
            finished = WebhookEvent.objects.finish(event, status)
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
        WebhookEvent.objects.finish(event, Status.FAILED, error_text(exc))
        raise
    if not (finished and exact):
        event.refresh_from_db()
    if not finished:
        # A late worker: no retry of its own either, the new holder decides.
        return Result(event, claimed=False)
    return Result(event, claimed=True, retry=retry, retry_after=retry_after, waiting=waiting)


def _fail(event: WebhookEvent, exc: Exception, why: str) -> bool:
    logger.warning("Webhook event %s (%s) failed: %s: %s", event.event_id, event.topic, why, exc)
    return WebhookEvent.objects.finish(event, Status.FAILED, error_text(exc))
