"""Cursor pagination as the document describes it: newest first by ``created_at``, and cursors
that neither lose nor repeat an item while data changes between pages.

A cursor names a position, not an item: the ``created_at`` and id of the last item served
(ties broken by id). The next page is whatever comes after that position now, so an item
created during the walk (newer, so before the cursor) is not served, one updated keeps its
place, and one that left the filtered set does not invalidate the cursor (no 400, as with
Nomos). Each collection keeps its items sorted by that key (rebuilt only when it changed), so a
page costs a binary search plus the items it looks at: a whole walk is linear in the items.
"""

from __future__ import annotations

import base64
import binascii
import json
from bisect import bisect_left
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from .http import ApiError, Request

Key = tuple[datetime, str]
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
DEFAULT_LIMIT = 10
MAX_LIMIT = 100


def _invalid(field: str, message: str, code: str) -> ApiError:
    return ApiError(
        400,
        f"Invalid request: {field}: {message}",
        [{"code": code, "field": field, "message": message}],
    )


def created(item: dict[str, Any]) -> datetime:
    value = item.get("created_at")
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return _EPOCH
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return _EPOCH


def key_of(item: dict[str, Any]) -> Key:
    return (created(item), str(item["id"]))


class Ordered:
    """The ids of one collection (a dict id -> item) sorted oldest first by ``key_of``;
    rebuilt when the collection's size (or the dict itself) changed since the last look."""

    def __init__(self) -> None:
        self._source: int | None = None
        self._size = -1
        self.keys: list[Key] = []

    def of(self, items: dict[str, dict[str, Any]]) -> list[Key]:
        if id(items) != self._source or len(items) != self._size:
            self.keys = sorted(key_of(item) for item in items.values())
            self._source, self._size = id(items), len(items)
        return self.keys


def encode_cursor(key: Key) -> str:
    # Shaped like the document's example cursor: base64 JSON of the last item's position.
    text = json.dumps({"last_created_at": key[0].isoformat(), "last_id": key[1]})
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Key:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        data = json.loads(text)
        moment = datetime.fromisoformat(data["last_created_at"])
        last_id = data["last_id"]
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, KeyError):
        raise _invalid("cursor", "Invalid cursor", "invalid_value") from None
    if not isinstance(last_id, str) or moment.tzinfo is None:
        raise _invalid("cursor", "Invalid cursor", "invalid_value")
    return (moment, last_id)


def limit_of(request: Request) -> int:
    raw = request.param("limit")
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        # The document types it as a number: "10.0" is ten, "2.5" is not a page size.
        number = float(raw)
    except ValueError:
        raise _invalid("limit", "Expected a number", "invalid_type") from None
    if number != number or not number.is_integer():
        raise _invalid("limit", "Expected an integer", "invalid_type")
    if not 1 <= number <= MAX_LIMIT:
        code = "too_small" if number < 1 else "too_big"
        raise _invalid("limit", f"Must be between 1 and {MAX_LIMIT}", code)
    return int(number)


def page(
    request: Request,
    items: dict[str, dict[str, Any]],
    order: Ordered,
    keep: Callable[[dict[str, Any]], bool],
    shape: Callable[[dict[str, Any]], dict[str, Any]] = dict,
) -> dict[str, Any]:
    """One page of ``items`` (newest first) that ``keep`` accepts, each shaped by ``shape``.
    Call with the sandbox's lock held."""
    limit = limit_of(request)
    keys = order.of(items)
    cursor = request.param("cursor")
    # Positions below ``end`` come after the cursor in newest-first order.
    end = bisect_left(keys, decode_cursor(cursor)) if cursor else len(keys)
    found: list[dict[str, Any]] = []
    last: Key | None = None
    has_more = False
    for index in range(end - 1, -1, -1):
        item = items.get(keys[index][1])
        if item is None or not keep(item):
            continue
        if len(found) == limit:
            has_more = True
            break
        found.append(shape(item))
        last = keys[index]
    return {
        "object": "list",
        "items": found,
        "has_more": has_more,
        "next_page": encode_cursor(last) if has_more and last is not None else None,
    }
