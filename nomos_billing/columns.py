"""What our rows hold of a Nomos object: the columns of a customer and of a subscription.

Values are cut to their column's length and an unknown type is left out, so that no answer of
Nomos' (a null, a longer string, a type added later) makes a write fail.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils.dateparse import parse_datetime

from .models import STATUS_LENGTH, NomosCustomer, NomosSubscription


def text(value: Any, max_length: int) -> str:
    # Nomos may send null for optional strings; PostgreSQL would refuse an over-long value.
    return "" if value is None else str(value)[:max_length]


def choice(value: Any, choices: frozenset[str]) -> str:
    return value if isinstance(value, str) and value in choices else ""


# ``Type.values`` builds a list on every read; a sync reads them once per item.
_CUSTOMER_TYPES = frozenset(NomosCustomer.Type.values)
_SUBSCRIPTION_TYPES = frozenset(NomosSubscription.Type.values)


def status_value(value: Any) -> str:
    # A status Nomos added after this code was written is kept as sent (the admin shows it,
    # a later read replaces it) rather than blanked; it announces no change.
    return text(value, STATUS_LENGTH) if isinstance(value, str) else ""


def datetime_or_none(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        # What parse_datetime tries first (a sync parses five per subscription).
        return datetime.fromisoformat(value)
    except ValueError:
        pass
    try:
        return parse_datetime(value)
    except ValueError:
        return None


#: The ``NomosCustomer`` columns ``customer_fields`` fills.
CUSTOMER_COLUMNS = ("email", "first_name", "last_name", "company_name", "type")


def customer_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Our ``NomosCustomer`` columns (``CUSTOMER_COLUMNS``) from a Nomos customer object."""
    email, first, last, company, kind = map(
        data.get, ("email", "first_name", "last_name", "company_name", "type")
    )
    # As in subscription_fields: a plain string is cut here, anything else by ``text``.
    return {
        "email": email[:254] if type(email) is str else text(email, 254),
        "first_name": first[:100] if type(first) is str else text(first, 100),
        "last_name": last[:100] if type(last) is str else text(last, 100),
        "company_name": company[:100] if type(company) is str else text(company, 100),
        "type": (kind if type(kind) is str and kind in _CUSTOMER_TYPES else "")
        or choice(kind, _CUSTOMER_TYPES)
        or NomosCustomer.Type.PERSON,
    }


#: The ``NomosSubscription`` columns ``subscription_fields`` fills.
SUBSCRIPTION_COLUMNS = (
    "status",
    "plan",
    "type",
    "number",
    "start_at",
    "end_at",
    "terminated_at",
    "metadata",
    "nomos_created_at",
    "nomos_updated_at",
)


#: The Nomos keys of a subscription's moments, in the order ``subscription_fields`` reads them.
_MOMENT_KEYS = ("start_at", "end_at", "terminated_at", "created_at", "updated_at")


def _moments(data: dict[str, Any]) -> list[datetime | None]:
    values = list(map(data.get, _MOMENT_KEYS))
    try:
        # One try for the five: what Nomos sends, ISO 8601 strings or null, takes only
        # fromisoformat (a sync parses five per subscription). Anything else, an empty string
        # included (ValueError), takes datetime_or_none's way for all five.
        return [None if value is None else datetime.fromisoformat(value) for value in values]
    except (TypeError, ValueError):
        return list(map(datetime_or_none, values))


def subscription_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Our ``NomosSubscription`` columns (``SUBSCRIPTION_COLUMNS``) from a Nomos subscription
    object."""
    get = data.get
    metadata, status, plan, kind, number = map(
        get, ("metadata", "status", "plan", "type", "number")
    )
    start_at, end_at, terminated_at, created_at, updated_at = _moments(data)
    # A plain string (what Nomos sends) is cut here; anything else takes the functions' way.
    return {
        "status": status[:STATUS_LENGTH] if type(status) is str else status_value(status),
        "plan": plan[:64] if type(plan) is str else text(plan, 64),
        "type": kind
        if type(kind) is str and kind in _SUBSCRIPTION_TYPES
        else choice(kind, _SUBSCRIPTION_TYPES),
        "number": number[:64] if type(number) is str else text(number, 64),
        "start_at": start_at,
        "end_at": end_at,
        "terminated_at": terminated_at,
        "metadata": metadata if isinstance(metadata, dict) else {},
        "nomos_created_at": created_at,
        "nomos_updated_at": updated_at,
    }
