"""Stuck events taken over while deliveries come in: no redelivery and no operator needed.

A web worker killed mid-event (SIGKILL, the OOM killer, gunicorn's timeout) leaves its event
``processing`` (``WebhookEvent.objects.stuck()``), and Nomos may never redeliver it in time, or at
all when a task worker died after the view answered 202. After each delivery it recorded, the
webhook view calls ``after_delivery``; at most once per ``interval()`` in each process (one query
on the status index) it looks for stuck events and:

- inline (no ``TASK_BACKEND``): processes the oldest one, inside what is left of this request's
  ``WEBHOOK_BUDGET``, so Nomos still gets its answer in time; while more are stuck, the next
  delivery looks again at once;
- queued: puts up to ``QUEUED_BATCH`` back in the queue (``received``) for a live worker; when
  no worker has been seen for ``CLAIM_TIMEOUT`` (``workers``), processes the oldest one itself
  as inline does, counting events that waited in the queue as long as abandoned too.

Any other request to the site gives the look its turn too (``after_request``, on Django's
``request_finished``), and task workers watch their own claims (``tasks``): a site without
deliveries is covered as long as it gets traffic or runs a worker.
The claim stays the one arbiter: whoever takes an event over does so with the conditional UPDATE
of ``WebhookEvent.objects.claim``, so it is processed once however many processes look at the
same time.
An event whose claim went stale is thus taken over within ``interval()`` (plus the gap to the
next delivery), well inside 2 x ``CLAIM_TIMEOUT`` of the claim.
"""

from __future__ import annotations

import logging
import threading
import time
from contextvars import ContextVar
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from django.urls import Resolver404, resolve

from . import budget, tasks, workers
from .conf import nomos_settings
from .exceptions import EnqueueError
from .lifecycle import claim_timeout
from .models import WebhookEvent
from .processing import process_event

logger = logging.getLogger("nomos_billing.takeover")

Status = WebhookEvent.Status

#: Stuck events put back in the queue per look: enough for every worker a crash can kill at
#: once, bounded so one delivery never pays for a long list.
QUEUED_BATCH = 20

_lock = threading.Lock()
#: ``time.monotonic()`` before which this process does not look again.
_next_look = 0.0


def interval() -> float:
    """Seconds between two looks of one process: a quarter of ``CLAIM_TIMEOUT``."""
    return claim_timeout().total_seconds() / 4


def reset() -> None:
    """Look at the next delivery (tests, and after a look that left work behind)."""
    global _next_look
    with _lock:
        _next_look = 0.0


def _due() -> bool:
    global _next_look
    now = time.monotonic()
    with _lock:
        if now < _next_look:
            return False
        _next_look = now + interval()
        return True


def after_delivery(deadline: float) -> None:
    """Take over stuck events if this process has not looked lately; ``deadline`` (a
    ``time.monotonic()`` value) is when the current request's ``WEBHOOK_BUDGET`` ends.

    Never raises: the delivery that carries this look has its answer already.
    """
    if not _due():
        return
    try:
        alias = tasks.backend_alias()
        if alias is None:
            more = _process_one(deadline)
        elif workers.handoff_timeout() == 0 or workers.seen_within(
            alias, claim_timeout().total_seconds()
        ):
            more = _requeue()
        else:
            # No worker lately: the queue holds its events for nobody; do a worker's job here.
            more = _process_one(deadline, queued=True)
    except DatabaseError as exc:
        logger.warning("Could not look for stuck webhook events: %s: %s", type(exc).__name__, exc)
        return
    except Exception:
        # A bug in a handler or a site's receiver: recorded on the event (failed) by
        # process_event; it must not turn this delivery's answer into a 500.
        logger.exception("Taking over a stuck webhook event failed")
        return
    if more:
        reset()


#: The path of the request being served (``request_started`` names it, ``request_finished``
#: does not); a context variable, so threads and ASGI tasks each see their own.
_request_path: ContextVar[str | None] = ContextVar("nomos_billing_request_path", default=None)


def before_request(
    environ: dict[str, Any] | None = None, scope: dict[str, Any] | None = None, **kwargs: Any
) -> None:
    """``request_started`` receiver: remember the path for ``after_request``."""
    path = (environ or {}).get("PATH_INFO") if scope is None else scope.get("path")
    _request_path.set(path if isinstance(path, str) else None)


def after_request(**kwargs: Any) -> None:
    """``request_finished`` receiver: any request to the site (a click, any page) gives the look
    its turn, so a stuck event is taken over while the site gets traffic, also when no webhook
    comes. Django sends the signal when the response is closed, after its body was written: the
    visitor does not wait for the look, only this worker does (once per ``interval()``).

    Not the webhook URL's requests: the view looks after a verified delivery only, so that a
    forged one changes nothing.
    """
    path = _request_path.get()
    _request_path.set(None)
    if path is None or time.monotonic() < _next_look or _is_webhook(path):
        return
    after_delivery(time.monotonic() + nomos_settings.WEBHOOK_BUDGET)


def _is_webhook(path: str) -> bool:
    try:
        return resolve(path).view_name == "nomos_billing:webhook"
    except Resolver404:
        return False


def _process_one(deadline: float, *, queued: bool = False) -> bool:
    """Process the oldest stuck event within the time left; True when one was found.

    ``queued``: no task worker has been seen for ``CLAIM_TIMEOUT``, so an event waiting in the
    queue as long (``received``; Nomos had its 202) is abandoned too.
    """
    events = WebhookEvent.objects.abandoned() if queued else WebhookEvent.objects.stuck()
    event = events.order_by("updated_at").first()
    if event is None:
        return False
    left = deadline - time.monotonic()
    if left < nomos_settings.WEBHOOK_BUDGET / 2:
        return True  # this request used most of its budget; the next delivery takes it over
    left_as = "processing" if event.status == Status.PROCESSING else "queued"
    with budget.limit(left):
        result = process_event(event, takeover=left_as == "processing")
    if result.claimed:
        logger.warning(
            "Took over webhook event %s (%s), left %s by a worker that stopped: %s",
            event.event_id,
            event.topic,
            left_as,
            result.status,
        )
    return True


def _requeue() -> bool:
    """Put stuck events back in the queue; True when there may be more."""
    stuck = list(
        WebhookEvent.objects.stuck()
        .order_by("claimed_at")
        .values_list("pk", "event_id", "claimed_at")[:QUEUED_BATCH]
    )
    for pk, event_id, claimed_at in stuck:
        if not WebhookEvent.objects.put_back(pk):
            continue
        try:
            tasks.enqueue(event_id)
        except (EnqueueError, ImproperlyConfigured) as exc:
            WebhookEvent.objects.stuck_again(pk, claimed_at)
            logger.warning(
                "Could not put stuck webhook event %s back in the queue: %s", event_id, exc
            )
            return False
        logger.warning(
            "Put webhook event %s back in the queue, left processing by a worker that stopped",
            event_id,
        )
    return len(stuck) == QUEUED_BATCH
