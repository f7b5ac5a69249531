"""List filters, and the check that Nomos really applied them.

Nomos silently ignores a filter naming an unknown field or a disallowed operator and answers
with the *unfiltered* list (API-NOTES, "Filtering lists"). A caller that trusted the filter would
sync the wrong customers or move a catch-up watermark past changes it never saw. So every list
walk sends its filters as query parameters *and* checks each item it gets back against the same
filters; one item that does not match stops the walk with ``NomosFilterIgnored``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from django.utils.dateparse import parse_datetime

from .exceptions import NomosFilterIgnored

#: Operators Nomos documents for strings (and enums) and for dates.
STRING_OPERATORS = frozenset({"eq", "ne", "in", "is_null", "contains", "starts_with", "ends_with"})
DATE_OPERATORS = frozenset({"gte", "lte"})

__all__ = ["ListFilter", "check_page", "query_params"]


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        parsed: datetime | None = value
    elif isinstance(value, str) and value:
        try:
            parsed = parse_datetime(value)
        except ValueError:
            parsed = None
    else:
        parsed = None
    if parsed is not None and parsed.tzinfo is None:
        # Nomos requires a timezone; treat a naive value from our own code as UTC.
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def _field_value(item: Mapping[str, Any], field: str) -> Any:
    value = item.get(field)
    # List items carry ids, single reads embed objects: compare by id either way. (A str
    # first: the abc check costs a walk of every item more than all its other checks.)
    if type(value) is not str and isinstance(value, Mapping):
        return value.get("id")
    return value


@dataclass(frozen=True)
class ListFilter:
    """``filter[<field>][<operator>]=<value>``; ``value`` is a datetime for date operators."""

    field: str
    operator: str
    value: Any

    def __post_init__(self) -> None:
        if self.operator not in STRING_OPERATORS | DATE_OPERATORS:
            raise ValueError(f"unknown filter operator {self.operator!r}")
        if self.operator in DATE_OPERATORS and _as_datetime(self.value) is None:
            raise ValueError(f"filter on {self.field!r} needs a datetime, got {self.value!r}")

    @functools.cached_property
    def moment(self) -> datetime | None:
        """``value`` as a datetime (read once: ``check_page`` compares every item with it)."""
        return _as_datetime(self.value)

    @property
    def param(self) -> str:
        return f"filter[{self.field}][{self.operator}]"

    @property
    def wire_value(self) -> str:
        if self.operator in DATE_OPERATORS:
            moment = _as_datetime(self.value)
            assert moment is not None  # checked in __post_init__
            return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
        if self.operator == "in" and not isinstance(self.value, str):
            return ",".join(str(v) for v in self.value)
        if self.operator == "is_null":
            return "true" if self.value in (True, "true") else "false"
        return str(self.value)

    def matches(self, item: Mapping[str, Any]) -> bool:
        actual = _field_value(item, self.field)
        op = self.operator
        if op in DATE_OPERATORS:
            moment, wanted = _as_datetime(actual), self.moment
            if moment is None or wanted is None:
                return False
            return moment >= wanted if op == "gte" else moment <= wanted
        if op == "is_null":
            return (actual is None) == (self.wire_value == "true")
        if actual is None:
            return op == "ne"
        text = str(actual)
        wanted_text = self.wire_value
        if op == "eq":
            return text == wanted_text
        if op == "ne":
            return text != wanted_text
        if op == "in":
            return text in wanted_text.split(",")
        if op == "contains":
            return wanted_text in text
        if op == "starts_with":
            return text.startswith(wanted_text)
        return text.endswith(wanted_text)


def query_params(filters: Iterable[ListFilter]) -> dict[str, str]:
    return {f.param: f.wire_value for f in filters}


def check_page(path: str, items: list[Any], filters: Iterable[ListFilter]) -> None:
    """Raise ``NomosFilterIgnored`` unless every item of the page matches every filter.

    A whole page is checked before any of it is handed on, so a walk whose filter was ignored
    stops before the caller stores anything from it.
    """
    filters = tuple(filters)
    if not filters:
        return
    for item in items:
        if type(item) is not dict and not isinstance(item, Mapping):
            raise NomosFilterIgnored(path, "an item that is not an object", "")
        for wanted in filters:
            if not wanted.matches(item):
                raise NomosFilterIgnored(
                    path, f"{wanted.param}={wanted.wire_value}", str(item.get("id", "?"))
                )
