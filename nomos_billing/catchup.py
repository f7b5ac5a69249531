"""The catch-up that heals lost webhooks: ``nomos_sync --since auto|<ISO 8601>``.

If every delivery of an event is lost (a long outage on our side, a wrong secret for a
weekend), the change never reaches us through webhooks. The catch-up asks Nomos for every
subscription updated since the last complete walk (``filter[updated_at][gte]``) and upserts
each with the webhook's own code, so it is idempotent with concurrent webhooks.

The watermark is our clock at the start of the last walk that finished: it moves only after a
complete walk, so a walk that crashed or that Nomos answered with an unfiltered list (the client
refuses it, ``NomosFilterIgnored``) repeats that stretch next time instead of skipping it. Each
walk starts ``overlap`` before the watermark, for clock skew between us and Nomos.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from .models import NomosSyncState

STATE_NAME = "subscriptions"
DEFAULT_OVERLAP = timedelta(minutes=10)

#: For sites without a scheduling task backend: run the catch-up every 15 minutes.
CRON_LINE = "*/15 * * * * cd /path/to/site && python manage.py nomos_sync --since auto -v 0"


@dataclass(frozen=True)
class Walk:
    #: Ask Nomos for subscriptions updated at or after this; None walks everything.
    updated_since: datetime | None
    started_at: datetime


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
    """Record a walk that finished; True when the watermark moved to its start.

    An explicit ``--since`` later than the stored watermark leaves a gap behind it, so the
    watermark moves only when the walk began at or before it (or there was none).
    """
    state, _ = NomosSyncState.objects.get_or_create(name=STATE_NAME)
    covers = (
        state.watermark is None
        or walk.updated_since is None
        or walk.updated_since <= state.watermark
    )
    state.last_completed_at = timezone.now()
    state.last_count = count
    state.last_error = ""
    fields = ["last_completed_at", "last_count", "last_error"]
    if covers and (state.watermark is None or walk.started_at > state.watermark):
        state.watermark = walk.started_at
        fields.append("watermark")
    state.save(update_fields=fields)
    return "watermark" in fields


def fail(error: str) -> None:
    """Record why a walk stopped; the watermark stays."""
    NomosSyncState.objects.update_or_create(name=STATE_NAME, defaults={"last_error": error[:2000]})
