"""The catch-up that heals lost webhooks: ``nomos_sync --since auto|<ISO 8601>``.

If every delivery of an event is lost (a long outage on our side, a wrong secret for a
weekend), the change never reaches us through webhooks. The catch-up asks Nomos for every
subscription updated since the last complete walk (``filter[updated_at][gte]``) and upserts
each with the webhook's own code, so it is idempotent with concurrent webhooks.

The watermark is Nomos' clock, never ours: the ``updated_at`` it is compared with is written
by Nomos' clock, which may run minutes ahead of or behind ours. It is Nomos' ``Date`` on the
walk's first page (Nomos' time when the walk began; everything changed later has a later
``updated_at``), or, without a ``Date``, the greatest ``updated_at`` the walk saw.

It moves only after a complete, verified walk: one that crashed, that Nomos answered with an
unfiltered list (the client refuses it, ``NomosFilterIgnored``), that ended on a page saying
``has_more`` without a cursor, or that met an item we could not store (no id, no customer)
repeats that stretch next time instead of skipping it, and says why (``last_error``). Each walk
starts ``overlap`` before the watermark: a change Nomos commits a moment after stamping it, and
the ``Date`` header's whole seconds, must not fall between two walks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from .models import NomosSyncState

STATE_NAME = "subscriptions"
DEFAULT_OVERLAP = timedelta(minutes=10)

#: For sites without a scheduling task backend: run the catch-up every 15 minutes.
CRON_LINE = "*/15 * * * * cd /path/to/site && python manage.py nomos_sync --since auto -v 0"


@dataclass
class Walk:
    #: Ask Nomos for subscriptions updated at or after this; None walks everything.
    updated_since: datetime | None
    #: Our clock, for the record (``last_started_at``); never a bound on Nomos' data.
    started_at: datetime
    #: Nomos' ``Date`` on the first page: its clock when the walk began.
    nomos_time: datetime | None = None
    #: The greatest ``updated_at`` among the items the walk stored.
    latest_updated_at: datetime | None = None
    #: Why the walk is incomplete; the watermark stays while there is any.
    problems: list[str] = field(default_factory=list)

    def saw(self, item: dict[str, Any]) -> None:
        """Note a stored item's ``updated_at`` (Nomos' clock)."""
        updated = _moment(item.get("updated_at"))
        if updated is not None and (
            self.latest_updated_at is None or updated > self.latest_updated_at
        ):
            self.latest_updated_at = updated

    @property
    def mark(self) -> datetime | None:
        """Where this walk would put the watermark: Nomos' time, from Nomos' data."""
        return self.nomos_time or self.latest_updated_at


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:
        return None
    return parsed if parsed is not None and timezone.is_aware(parsed) else None


def parse_since(value: str) -> datetime:
    """An ISO 8601 date-time with a timezone, or ``ValueError``."""
    parsed = parse_datetime(value)
    if parsed is None or timezone.is_naive(parsed):
        raise ValueError(
            f"{value!r} is not an ISO 8601 date-time with a timezone (e.g. 2026-11-01T00:00:00Z)"
        )
    return parsed


def get_state() -> NomosSyncState | None:
    return NomosSyncState.objects.filter(name=STATE_NAME).first()


def begin(since: str, overlap: timedelta = DEFAULT_OVERLAP, *, record: bool = True) -> Walk:
    """Plan a walk: ``since`` is "auto" (from the stored watermark, everything the first
    time) or an ISO 8601 date-time. ``record`` notes the start for the health view."""
    now = timezone.now()
    if since == "auto":
        state = get_state()
        bound = None if state is None or state.watermark is None else state.watermark - overlap
    else:
        bound = parse_since(since)
    if record:
        NomosSyncState.objects.update_or_create(
            name=STATE_NAME, defaults={"last_started_at": now, "last_error": ""}
        )
    return Walk(updated_since=bound, started_at=now)


def complete(walk: Walk, count: int) -> bool:
    """Record a walk that reached Nomos' last page; True when the watermark moved to its mark.

    A walk with ``problems`` is not complete: the watermark stays and ``last_error`` says why.
    An explicit ``--since`` later than the stored watermark leaves a gap behind it, so the
    watermark moves only when the walk began at or before it (or there was none); and never
    backwards.
    """
    state, _ = NomosSyncState.objects.get_or_create(name=STATE_NAME)
    state.last_count = count
    if walk.problems:
        state.last_error = incomplete_message(walk, state.watermark)[:2000]
        state.save(update_fields=["last_count", "last_error"])
        return False
    covers = (
        state.watermark is None
        or walk.updated_since is None
        or walk.updated_since <= state.watermark
    )
    state.last_completed_at = timezone.now()
    state.last_error = ""
    fields = ["last_completed_at", "last_count", "last_error"]
    mark = walk.mark
    if covers and mark is not None and (state.watermark is None or mark > state.watermark):
        state.watermark = mark
        fields.append("watermark")
    state.save(update_fields=fields)
    return "watermark" in fields


def incomplete_message(walk: Walk, watermark: datetime | None) -> str:
    kept = watermark.isoformat() if watermark else "unset"
    return f"incomplete walk, watermark kept at {kept}: " + "; ".join(walk.problems)


def fail(error: str) -> None:
    """Record why a walk stopped; the watermark stays."""
    NomosSyncState.objects.update_or_create(name=STATE_NAME, defaults={"last_error": error[:2000]})
