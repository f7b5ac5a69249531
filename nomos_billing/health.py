"""What an operator needs to see at a glance: is Nomos talking to us, is anything stuck?

One function, ``collect``, feeds both the admin page (``admin/``, linked from the app's index)
and ``manage.py nomos_status [--json]``. Its cost is a fixed number of queries, each served by
an index and bounded by ``LIMIT``, whatever the size of the event and customer tables: the page
is meant to be reloaded while something is on fire. So counts stop at ``counts.BOUND``; the
ones that reached it are named in ``Health.more`` and shown as "more than 10,000".

Never shows a secret: the token state is whether one is cached and how long it has left.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.core.cache import caches
from django.db.models import Count, Max, Q, Sum
from django.utils import timezone
from django.utils.translation import gettext as _

from . import breaker, catchup, counts, tasks, workers
from .conf import nomos_settings
from .models import NomosCustomer, WebhookEvent
from .tokens import AccessToken

logger = logging.getLogger("nomos_billing.health")

Status = WebhookEvent.Status

#: The counts of ``Health``, each shown as a number or "more than" the bound it reached.
COUNTS = (
    "deliveries_24h",
    "events_24h",
    "failures_24h",
    "failed",
    "stuck",
    "unlinked_customers",
)
#: The failed and stuck events listed by name (the rest are counted).
LISTED_EVENTS = 20
WINDOW = timedelta(hours=24)
#: Longer than any id Nomos sends (the models hold 64); free text (errors that may echo an id
#: from an event or a Nomos message) is cut shorter than it is stored.
ID_LENGTH = 64
TEXT_LENGTH = 300


def shown(value: str, limit: int) -> str:
    """``value`` on one line (line breaks and control characters, a terminal's escapes too, as
    spaces), cut to ``limit`` characters: one event stays one line of the page or the terminal."""
    text = " ".join("".join(c if c.isprintable() else " " for c in value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class EventLine:
    pk: int
    event_id: str
    topic: str
    status: str
    received_at: datetime
    attempts: int
    last_error: str
    stuck: bool


@dataclass
class Health:
    now: datetime
    last_delivery_at: datetime | None
    deliveries_24h: int
    events_24h: int
    failures_24h: int
    failed: int
    stuck: int
    problem_events: list[EventLine] = field(default_factory=list)
    unlinked_customers: int = 0
    catch_up_started_at: datetime | None = None
    catch_up_completed_at: datetime | None = None
    catch_up_count: int = 0
    catch_up_error: str = ""
    watermark: datetime | None = None
    token_cached: bool = False
    token_expires_in: int | None = None
    breaker: str | None = None
    task_backend: str | None = None
    queue_depth: int | None = None
    #: Seconds since a task worker last started one of our jobs (``workers``); None: not seen.
    worker_seen_age: int | None = None
    #: The counts that stopped at ``counts.BOUND``: there are more than that.
    more: list[str] = field(default_factory=list)
    #: The counts taken over the newest ``counts.BOUND + 1`` events only: lower bounds.
    at_least: list[str] = field(default_factory=list)

    def shown(self, name: str) -> str:
        """A count as it is shown: the number, "more than" the bound it reached, or "at
        least" what the newest events hold."""
        value = getattr(self, name)
        if name in self.more:
            return _("more than %(count)s") % {"count": value}
        if name in self.at_least:
            return _("at least %(count)s") % {"count": value}
        return str(value)

    @property
    def counts(self) -> dict[str, str]:
        """The counts as shown (for the template)."""
        return {name: self.shown(name) for name in COUNTS}

    @property
    def last_delivery_age(self) -> int | None:
        if self.last_delivery_at is None:
            return None
        return max(0, int((self.now - self.last_delivery_at).total_seconds()))

    def as_json(self) -> dict[str, Any]:
        """Plain JSON types, ages in whole seconds, times in ISO 8601."""
        data = asdict(self)
        data["last_delivery_age"] = self.last_delivery_age
        return _jsonable(data)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def breaker_state() -> str | None:
    """The outage breaker's state ("off", "closed", "open"), or None when it cannot be read."""
    try:
        return breaker.state().word
    except Exception:  # a monitoring read must never take the page down
        logger.info("Could not read the outage breaker's state", exc_info=True)
        return None


def _token() -> tuple[bool, int | None]:
    try:
        cached = AccessToken.from_cache_value(
            caches[nomos_settings.TOKEN_CACHE].get(nomos_settings.token_cache_key)
        )
    except Exception:  # an unreachable cache is reported as "no token", not a crash
        logger.info("Could not read the token cache", exc_info=True)
        return False, None
    if cached is None:
        return False, None
    return True, int(cached.remaining(time.time()))


def _queue() -> tuple[str | None, int | None, int | None]:
    """The task backend's alias, its queue depth and seconds since a worker was seen."""
    alias = tasks.backend_alias()
    if alias is None:
        return None, None, None
    age = workers.last_seen(alias)
    seen = None if age is None else int(age)
    try:
        return alias, tasks.queue_depth(), seen
    except Exception:
        logger.info("Could not read the task queue", exc_info=True)
        return alias, None, seen


def collect() -> Health:
    """Everything on the health page, in a fixed number of queries."""
    now = timezone.now()
    since = now - WINDOW
    events = WebhookEvent.objects
    more: list[str] = []
    at_least: list[str] = []
    # Max on the indexed received_at: one index read.
    last = events.aggregate(last=Max("received_at"))["last"]
    # The last day only, through the received_at index, newest first up to the bound.
    day = (
        events.filter(received_at__gte=since)
        .order_by("-received_at")[: counts.BOUND + 1]
        .aggregate(
            events=Count("pk"),
            deliveries=Sum("deliveries"),
            failures=Count("pk", filter=Q(status=Status.FAILED)),
        )
    )
    if day["events"] > counts.BOUND:
        # Taken over the newest BOUND + 1 events of the day: the others are lower bounds.
        more.append("events_24h")
        at_least += ["deliveries_24h", "failures_24h"]
        day["events"] = counts.BOUND
    # Failed events through the (status, received_at) index, up to the bound; the stuck ones
    # among the few in processing.
    failed, more_failed = counts.bounded(events.filter(status=Status.FAILED))
    stuck_count, more_stuck = counts.bounded(events.stuck(now))
    unlinked, more_unlinked = counts.bounded(NomosCustomer.objects.filter(user__isnull=True))
    more += [
        name
        for name, over in (
            ("failed", more_failed),
            ("stuck", more_stuck),
            ("unlinked_customers", more_unlinked),
        )
        if over
    ]
    listed = [
        EventLine(
            pk=e.pk,
            event_id=shown(e.event_id, ID_LENGTH),
            topic=shown(e.topic, ID_LENGTH),
            status=e.status,
            received_at=e.received_at,
            attempts=e.attempts,
            last_error=shown(e.last_error, TEXT_LENGTH),
            # Only stuck ones among the processing events listed here.
            stuck=e.status == Status.PROCESSING,
        )
        for e in events.stuck_or_failed(now)
        .only("event_id", "topic", "status", "received_at", "attempts", "last_error")
        .order_by("-received_at")[:LISTED_EVENTS]
    ]
    state = catchup.get_state()
    cached, expires_in = _token()
    backend, depth, seen = _queue()
    return Health(
        now=now,
        last_delivery_at=last,
        deliveries_24h=day["deliveries"] or 0,
        events_24h=day["events"],
        failures_24h=day["failures"],
        failed=failed,
        stuck=stuck_count,
        problem_events=listed,
        unlinked_customers=unlinked,
        catch_up_started_at=state.last_started_at if state else None,
        catch_up_completed_at=state.last_completed_at if state else None,
        catch_up_count=state.last_count if state else 0,
        catch_up_error=shown(state.last_error, TEXT_LENGTH) if state else "",
        watermark=state.watermark if state else None,
        token_cached=cached,
        token_expires_in=expires_in,
        breaker=breaker_state(),
        task_backend=backend,
        queue_depth=depth,
        worker_seen_age=seen,
        more=more,
        at_least=at_least,
    )
