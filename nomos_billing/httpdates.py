"""What Nomos' answers say about time: its clock (``Date``) and ``Retry-After`` in either form.

Nomos' clock is not ours. A catch-up that filters Nomos' ``updated_at`` must take its bound
from Nomos (``Date``), and a ``Retry-After`` given as an HTTP-date is measured against Nomos'
``Date`` of the same answer, so that a skewed clock on either side does not turn "in 30 seconds"
into "now" or "in 15 minutes".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

__all__ = ["parse_http_date", "retry_after_seconds"]


def parse_http_date(value: object) -> datetime | None:
    """An HTTP-date (RFC 9110, e.g. ``Wed, 27 May 2026 07:28:00 GMT``) as an aware datetime,
    or None for anything else."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    # "-0000" parses naive; an HTTP-date is always GMT.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait a ``Retry-After`` header asks for, in seconds (0 for a date in the past), or None
    when there is none or it is neither delay-seconds nor an HTTP-date."""
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    # ASCII digits only: str.isdigit() also accepts "²" and other Unicode digits.
    if value.isascii() and value.isdigit():
        return float(int(value))
    moment = parse_http_date(value)
    if moment is None:
        return None
    now = parse_http_date(headers.get("Date")) or datetime.now(timezone.utc)
    return max(0.0, (moment - now).total_seconds())
