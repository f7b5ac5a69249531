"""Whether a task worker is alive to take a webhook event: what the webhook view's 202 promises.

A queue takes a job whether or not anything drains it. Were "queued" enough for a 202, an event
arriving after the only ``db_worker`` was killed (or before the RQ worker came back from a
deploy) would sit in the queue while Nomos, holding its 2xx, never redelivers. So the view
answers 202 only with evidence that a worker is alive, cheapest first:

1. a worker started one of our jobs within the last ``WORKER_HANDOFF_TIMEOUT`` seconds: every
   job stamps ``seen`` in ``TOKEN_CACHE``, which all processes share (while a backlog drains,
   that is every delivery, at the cost of one cache read);
2. else the view watches the event's row for up to ``WORKER_HANDOFF_TIMEOUT`` seconds: a
   worker that claims it is alive (RQ takes a job at once; ``db_worker`` polls every second by
   default).

Without either, the view processes the event itself inside ``WEBHOOK_BUDGET``, as inline
processing would, and says so at ERROR once per cool-down; the queued job later finds the event
done. The webhook takeover (``takeover``) does likewise with events a dead queue holds.

``WORKER_HANDOFF_TIMEOUT = 0`` trusts the queue: for workers that run on a schedule
(``db_worker --batch`` from cron), where no worker is alive between runs by design.

The cache is an optimisation here as everywhere: while it fails, each process sees only its own
stamps, so deliveries fall back to watching the row, which is slower but just as correct.
"""

from __future__ import annotations

import hashlib
import logging
import time
from time import monotonic, sleep

from .conf import SETTING_NAME, nomos_settings
from .misconfiguration import first_in_cooldown
from .models import WebhookEvent
from .shared_cache import token_cache

logger = logging.getLogger("nomos_billing.workers")

#: Seconds a stamp is kept; far longer than any handoff timeout, short enough to expire.
STAMP_TTL = 24 * 3600
#: Seconds between two reads of the event's row while waiting for a worker (first, longest).
POLL_FIRST = 0.02
POLL_LONGEST = 0.25


def handoff_timeout() -> float:
    """``WORKER_HANDOFF_TIMEOUT`` in seconds (0: trust the queue); the default when it is not a
    number of seconds from 0 up (the checks explain the wrong value)."""
    return nomos_settings.handoff_timeout


def _key(alias: str) -> str:
    # Per backend alias and API: two sites (or two Nomos accounts) sharing one Redis must not
    # vouch for each other's workers.
    ident = f"{alias}|{nomos_settings.token_cache_key}".encode()
    return "nomos_billing:worker-seen:" + hashlib.sha256(ident).hexdigest()[:24]


def seen(alias: str) -> None:
    """A worker of ``alias`` is running one of our jobs now (called by the job itself)."""
    token_cache().set(_key(alias), time.time(), STAMP_TTL)


def last_seen(alias: str) -> float | None:
    """Seconds since a worker of ``alias`` last started one of our jobs, as far as this process
    can tell (the shared cache, or its stand-in while the cache fails); None: not seen."""
    stamp = token_cache().get(_key(alias))
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
        return max(0.0, time.time() - float(stamp))
    return None


def seen_within(alias: str, seconds: float) -> bool:
    age = last_seen(alias)
    return age is not None and age <= seconds


def handed_over(event: WebhookEvent, alias: str) -> bool:
    """True when a worker is alive to take ``event``, which waits in the queue ``received``.

    Waits at most ``handoff_timeout()`` seconds, and not at all while workers are busy.
    """
    timeout = handoff_timeout()
    if timeout == 0 or seen_within(alias, timeout):
        return True
    deadline = monotonic() + timeout
    pause = POLL_FIRST
    while True:
        waiting = WebhookEvent.objects.filter(
            pk=event.pk, status=WebhookEvent.Status.RECEIVED
        ).exists()
        # Claimed (or already finished) by someone, or a worker started another job meanwhile.
        if not waiting or seen_within(alias, timeout):
            return True
        left = deadline - monotonic()
        if left <= 0:
            return False
        sleep(min(pause, left))
        pause = min(pause * 2, POLL_LONGEST)


def report_absent(alias: str, event_id: str) -> None:
    """One ERROR per cool-down (all processes): no worker took an event, so the web process did."""
    if first_in_cooldown(f"nomos_billing:no-worker:{_key(alias)}"):
        logger.error(
            "No task worker of %s['TASK_BACKEND'] = %r took webhook event %s within %g s "
            "(WORKER_HANDOFF_TIMEOUT), so this web process processed it: start a worker "
            "(manage.py db_worker, or rqworker --with-scheduler), or set "
            "WORKER_HANDOFF_TIMEOUT to 0 if workers run on a schedule.",
            SETTING_NAME,
            alias,
            event_id,
            handoff_timeout(),
        )
