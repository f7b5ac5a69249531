"""The life of a webhook event, in one place: its states and every rule that moves it.

::

    received --claim--> processing --finish--> processed | ignored | failed
        ^                   |  (claim older than CLAIM_TIMEOUT: "stuck")
        +----- put back ----+  (taken over by a claim, or put back in the queue)

- **Claim**: one conditional UPDATE (``WebhookEvent.objects.claim``); only the call whose
  UPDATE changed the row processes the event. A single UPDATE is atomic on SQLite and
  PostgreSQL alike, and unlike ``select_for_update`` it holds no lock (nor an open transaction)
  while we wait for Nomos over the network.
- **Finish**: the outcome is written only while the row still carries this call's claim
  (``claimed_at`` is the claim's token), so a worker whose claim was taken over never writes
  over the new holder's outcome.
- **Stuck**: ``processing`` with a claim older than ``claim_timeout()``, which only a worker
  that died leaves behind (``stuck``). The webhook view's sweep (``takeover``), task workers'
  watchdogs (``tasks``), ``nomos_replay --stuck``, the admin and the health page all read it here.
- **Abandoned**: stuck, or (with no task worker alive) ``received`` in the queue as long.
- **Re-enqueue**: a repeated delivery of an unfinished event enqueues it again only when its job
  may be lost (``needs_enqueue``); a worker meeting an outage retries after ``RETRY_DELAYS``.

The model (``WebhookEvent``) takes its states and its manager from here.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .conf import nomos_settings

if TYPE_CHECKING:
    from .models import WebhookEvent


class Status(models.TextChoices):
    # mypy (with the django-stubs of our dev environment) types a member as its (value, label)
    # tuple; a function typed to return a Status says "type: ignore[return-value]" for it.
    RECEIVED = "received", _("Received")
    # Internal: a worker has claimed the event (conditional UPDATE) and is processing it;
    # ``claimed_at`` says since when, so a claim left by a crashed worker can be taken over.
    PROCESSING = "processing", _("Processing")
    PROCESSED = "processed", _("Processed")
    FAILED = "failed", _("Failed")
    IGNORED = "ignored", _("Ignored")


#: Nothing is left to do for an event in these states; a redelivery is answered "already
#: processed".
FINISHED = (Status.PROCESSED, Status.IGNORED)
#: ``last_error`` is cut to this length.
MAX_ERROR_LENGTH = 2000
#: Seconds a worker waits before trying an event again after a Nomos outage; one entry per
#: re-enqueue. About an hour in all, like the first part of Nomos' own 3-day redelivery.
RETRY_DELAYS: tuple[int, ...] = (30, 120, 600, 1800)


def claim_timeout() -> timedelta:
    """A claim older than this was left by a worker that died mid-processing; the next delivery
    (or ``nomos_replay``) takes it over. ``CLAIM_TIMEOUT`` (default 60 s) is above
    ``WEBHOOK_BUDGET``, which bounds every processing (``process_event`` opens that budget), so
    a slow worker is never doubled, and a dead one's event waits about a minute, not five."""
    return timedelta(seconds=nomos_settings.CLAIM_TIMEOUT)


def _stuck(now: datetime | None = None) -> Q:
    # The one definition of "stuck".
    return Q(status=Status.PROCESSING, claimed_at__lt=(now or timezone.now()) - claim_timeout())


def is_stuck(event: WebhookEvent, now: datetime | None = None) -> bool:
    """The instance's answer to ``WebhookEvent.objects.stuck()``."""
    if event.status != Status.PROCESSING or event.claimed_at is None:
        return False
    return event.claimed_at < (now or timezone.now()) - claim_timeout()


def seconds_until_stale(event: WebhookEvent) -> int:
    """Whole seconds (at least 1) until the event's claim goes stale: when a redelivery could
    take it over."""
    now = timezone.now()
    left = ((event.claimed_at or now) + claim_timeout() - now).total_seconds()
    return max(1, math.ceil(left))


def needs_enqueue(event: WebhookEvent) -> bool:
    """Whether a repeated delivery of a stored, unfinished event should enqueue it again.

    A received event is assumed to sit in the queue, and a processing one to be in a worker's
    hands, unless that has lasted past the claim timeout (the job was lost, the worker died). A
    failed event (an outage, or an earlier enqueue that failed) is always enqueued again.
    """
    stale = timezone.now() - claim_timeout()
    if event.status == Status.FAILED:
        return True
    if event.status == Status.RECEIVED:
        return event.updated_at < stale
    if event.status == Status.PROCESSING:
        return event.claimed_at is None or event.claimed_at < stale
    return False


def retry_delay(retry: int, retry_after: int | None) -> int | None:
    """Seconds before a worker's retry number ``retry + 1`` after an outage, at least Nomos'
    ``Retry-After``; None when the retries are used up (the event stays failed)."""
    if retry >= len(RETRY_DELAYS):
        return None
    return max(RETRY_DELAYS[retry], retry_after or 0)


def error_text(exc: BaseException) -> str:
    # Our exceptions never carry secrets (see exceptions.py); others are named by type too.
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]


class WebhookEventQuerySet(models.QuerySet["WebhookEvent"]):
    def stuck(self, now: datetime | None = None) -> WebhookEventQuerySet:
        """Events left ``processing`` by a worker that died: a claim older than the timeout."""
        return self.filter(_stuck(now))

    def abandoned(self) -> WebhookEventQuerySet:
        """Stuck events, and events queued (``received``) as long: what is left when no task
        worker is alive to drain the queue."""
        stale = timezone.now() - claim_timeout()
        return self.filter(_stuck() | Q(status=Status.RECEIVED, updated_at__lt=stale))

    def stuck_or_failed(self, now: datetime | None = None) -> WebhookEventQuerySet:
        return self.filter(_stuck(now) | Q(status=Status.FAILED))

    def queued_for(self, subscription_id: str) -> WebhookEventQuerySet:
        """The queued (``received``) events of a subscription, oldest first (the partial index
        ``nomos_evt_waiting_idx``)."""
        return self.filter(
            status=Status.RECEIVED,
            topic__startswith="subscription",
            payload__context__subscription=subscription_id,
        ).order_by("received_at")

    def claim(self, event: WebhookEvent, *, force: bool = False, takeover: bool = False) -> bool:
        """Take the event for processing with one conditional UPDATE; True if this call won.

        Claimable: received (recorded, never processed), failed (a redelivery or replay), or a
        stale claim. ``force`` (replay, admin) also takes processed and ignored events, but
        never one that is being processed right now. ``takeover`` takes a stale claim only: a
        failed event waits for its redelivery or its planned retry, not for whoever passes by.
        """
        now = timezone.now()
        claimable = _stuck(now)
        if not takeover:
            claimable |= Q(status__in=[Status.RECEIVED, Status.FAILED])
        if force:
            claimable |= Q(status__in=FINISHED)
        won = self.filter(claimable, pk=event.pk).update(
            status=Status.PROCESSING, claimed_at=now, attempts=F("attempts") + 1, updated_at=now
        )
        if won:
            # The claim's token: ``finish`` records an outcome only while the row still holds it.
            event.status, event.claimed_at = str(Status.PROCESSING), now
        return bool(won)

    def finish(self, event: WebhookEvent, status: str, error: str = "") -> bool:
        """Record the outcome; True when this call did (it held the claim). The instance gets
        the written fields, so a caller that knows the rest of the row needs no read-back."""
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
        # token: a worker whose claim went stale and was taken over (a new ``claimed_at``), or
        # put back in the queue, must not write its late outcome over the new holder's.
        updated = self.filter(
            pk=event.pk, status=Status.PROCESSING, claimed_at=event.claimed_at
        ).update(**fields)
        if updated:
            for name, value in fields.items():
                setattr(event, name, value)
        return bool(updated)

    def put_back(self, pk: Any) -> bool:
        """Put a stuck event back in the queue (``received``); True when this call did. The
        same conditional UPDATE as a claim: one process puts the event back, once."""
        return bool(
            self.filter(_stuck(), pk=pk).update(
                status=Status.RECEIVED, claimed_at=None, updated_at=timezone.now()
            )
        )

    def stuck_again(self, pk: Any, claimed_at: datetime | None) -> None:
        """Undo ``put_back`` when the queue refused the event: stuck again rather than failed,
        since Nomos had its 202 and will not redeliver, so the next look must find it."""
        self.filter(pk=pk, status=Status.RECEIVED).update(
            status=Status.PROCESSING, claimed_at=claimed_at
        )

    def enqueue_failed(self, event: WebhookEvent, exc: BaseException) -> None:
        """Record that the queue refused a received or failed event (never one in a worker).

        Failed, not received: a received event counts as queued, so only this mark makes
        Nomos' redelivery (or ``nomos_replay --failed``) enqueue it again."""
        self.filter(pk=event.pk, status__in=[Status.RECEIVED, Status.FAILED]).update(
            status=Status.FAILED,
            last_error=f"Could not enqueue: {exc}"[:MAX_ERROR_LENGTH],
            updated_at=timezone.now(),
        )
