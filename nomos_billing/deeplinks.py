"""Which ``next`` values may choose the portal page after sign-in.

A deep link is copied into the magic link's ``next`` query parameter, on the portal's host. The
value comes from the browser, so it is untrusted: only a plain absolute path survives. The
grammar is deliberately narrower than what a URL allows (no percent-encoding, no dots-only
segments, ASCII only) so that no browser or portal normalisation can turn it into another host
or another scheme.
"""

from __future__ import annotations

import re

from .conf import nomos_settings

#: Longest ``next`` accepted; portal paths are short (``/invoices/inv_...``).
MAX_LENGTH = 200

# One leading "/", then segments of letters, digits, "-", "_", "." separated by single "/",
# optionally one trailing "/". "/" alone is the portal root. [A-Za-z0-9] instead of \w: \w
# matches non-ASCII letters and digits.
_SAFE_PATH = re.compile(r"/(?:[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*/?)?")
_DOTS_ONLY = re.compile(r"\.+")


def is_safe_path(value: str) -> bool:
    """True if ``value`` is a plain absolute path (ignores ``PORTAL_NEXT_PREFIXES``)."""
    if not isinstance(value, str) or not value or len(value) > MAX_LENGTH:
        return False
    if not _SAFE_PATH.fullmatch(value):
        return False
    # "." and ".." (and "...", which some servers still fold) could walk out of the path.
    return not any(_DOTS_ONLY.fullmatch(segment) for segment in value.split("/") if segment)


def matches_prefix(value: str, prefixes: list[str] | tuple[str, ...]) -> bool:
    """A prefix ending in "/" matches what starts with it; "/overview" matches "/overview" and
    "/overview/..." but not "/overviewer"."""
    for prefix in prefixes:
        if not isinstance(prefix, str) or not prefix:
            continue
        if prefix.endswith("/"):
            if value.startswith(prefix) or value == prefix.rstrip("/"):
                return True
        elif value == prefix or value.startswith(prefix + "/"):
            return True
    return False


def clean_next(value: str | None) -> str | None:
    """``value`` if it may become the portal's ``next``, else ``None`` (the portal's default
    page). Pure: reads ``PORTAL_NEXT_PREFIXES`` and nothing else, logs nothing."""
    if value is None or not isinstance(value, str) or not is_safe_path(value):
        return None
    prefixes = nomos_settings.PORTAL_NEXT_PREFIXES
    if prefixes is not None and not matches_prefix(value, prefixes):
        return None
    return value


def preview(value: object, limit: int = 60) -> str:
    """A short, escaped rendering of a rejected value for a log line (no CR/LF injection, no
    5 KB log lines)."""
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    text = repr(value[:limit])
    if len(value) > limit:
        text += f"... ({len(value)} chars)"
    return text
