"""JSON from the wire that our databases cannot hold.

Python's ``json`` accepts three things that PostgreSQL (``jsonb``, ``text``) refuses and that
SQLite would store only to hand back differently: the NUL character (``\\u0000``), lone UTF-16
surrogates (``\\ud800`` without its pair) and numbers too large for a float (``1e400`` parses
as ``inf``). A signed webhook envelope holding one is refused before anything is stored
(``problem``), identically on every database, so a redelivery cannot fail the same way forever.
Data we fetch from Nomos is ours to repair instead (``clean``): the strings lose the characters,
an infinite number becomes ``None``, and the subscription still syncs.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["clean", "loads_clean", "problem"]

#: The only ways a NUL or a lone surrogate gets into decoded JSON: an escape (``json`` refuses
#: a raw control character in a string, and text decoded from UTF-8 holds no surrogates).
#: Case-insensitive hex; a false alarm (an escaped backslash before "u0000") costs only the
#: full check.
_RISKY_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89abcdefABCDEF])")


def _string_problem(value: str) -> str | None:
    if "\x00" in value:
        return "a NUL character (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone surrogate (an unpaired \\ud800-\\udfff escape)"
    return None


def problem(data: Any) -> str | None:
    """What in ``data`` (decoded JSON) cannot be stored, in words for a 400 answer, or None.

    Iterative, not recursive: ``json.loads`` accepts nesting deeper than Python's recursion
    limit on 3.13+, and this check must answer for every input.
    """
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found = _string_problem(item)
        elif isinstance(item, float):
            found = None if math.isfinite(item) else "a number too large to store"
        elif isinstance(item, dict):
            for key, value in item.items():
                found = _string_problem(key) if isinstance(key, str) else None
                if found:
                    return found + " in a key"
                stack.append(value)
            continue
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            found = None
        if found:
            return found
    return None


def _clean_string(value: str) -> str:
    if _string_problem(value) is None:
        return value
    return "".join(c for c in value if c != "\x00" and not "\ud800" <= c <= "\udfff")


def clean(data: Any) -> Any:
    """``data`` with NUL and lone surrogates removed from every string (keys included) and
    non-finite numbers replaced by ``None``. Returns the same objects when nothing needs it."""
    if problem(data) is None:
        return data
    return _clean(data)


def loads_clean(body: bytes) -> Any:
    """``clean(json.loads(body))`` for a UTF-8 body, without walking every value when the
    body cannot hold a problem: no risky escape in it and no float (or ``NaN`` /
    ``Infinity``) that is not finite. A first sync decodes 100,000 subscriptions; the walk
    was a seventh of its CPU. ``ValueError`` when the body is not JSON."""
    odd = False

    def number(text: str) -> float:
        nonlocal odd
        value = float(text)
        if not math.isfinite(value):
            odd = True
        return value

    def constant(text: str) -> float:
        nonlocal odd
        odd = True
        return float(text)

    data = json.loads(body, parse_float=number, parse_constant=constant)
    # The escape search reads the bytes as UTF-8 (ASCII-compatible); UTF-16/32 get the walk.
    if odd or json.detect_encoding(body) != "utf-8" or _RISKY_ESCAPE.search(body):
        return clean(data)
    return data


def _clean(data: Any) -> Any:
    # Only reached for data that has a problem; Nomos' documents are shallow, so recursion
    # is fine here (a pathological depth fails as RecursionError, which callers treat as bad
    # data from Nomos).
    if isinstance(data, str):
        return _clean_string(data)
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {(_clean_string(k) if isinstance(k, str) else k): _clean(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_clean(v) for v in data]
    return data
