"""How a ``NOMOS_BILLING`` value is read: each parser returns the normalised value or raises
``ValueError`` saying what the value must be ("a whole number from 1 to 3600"); the table in
``settings_table.py`` names one per key."""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

PRODUCTION_URL = "https://api.nomos.energy"
API_VERSION = "2026-05-27.curie"

#: Nomos signing secrets are long random strings; anything shorter is a paste gone wrong. Against
#: a sandbox on loopback a short one is used without a word: the sandbox's own ``whsec_sandbox``
#: is the documented development setup, and ``check --deploy`` refuses a loopback API.
MIN_WEBHOOK_SECRET_LENGTH = 16
#: Bounds of a ``RATE_LIMITS`` entry: (requests, seconds).
MAX_RATE_REQUESTS = 100_000
MAX_RATE_WINDOW = 24 * 3600

Parser = Callable[[Any], Any]


@functools.lru_cache(maxsize=256)
def is_loopback(host: str | None) -> bool:
    # Cached: a click asks several times (link checks, http allowed?) about the same few hosts.
    if not host:
        return False
    # RFC 6761: every name under .localhost is loopback (browsers resolve them so; the
    # sandbox's portal and checkout hosts are such names).
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not (isinstance(value, float) and math.isnan(value))
    )


def whole(low: int, high: int) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        raise ValueError(f"a whole number from {low} to {high}")

    return parse


def number(low: float, high: float, *, above: bool = False) -> Parser:
    """A number from ``low`` (excluded when ``above``) to ``high``, as a float."""

    def parse(value: Any) -> float:
        if _is_number(value) and (value > low if above else value >= low) and value <= high:
            return float(value)
        lowest = f"above {low:g}" if above else f"from {low:g}"
        raise ValueError(f"a number {lowest} up to {high:g}")

    return parse


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("True or False")


def text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError("a string")


def optional(parse: Parser) -> Parser:
    def parse_optional(value: Any) -> Any:
        return None if value is None else parse(value)

    return parse_optional


def non_empty_text(value: Any) -> str:
    if isinstance(value, str) and value:
        return value
    raise ValueError("a non-empty string")


def timeout(value: Any) -> tuple[float, float]:
    """(connect, read) seconds; one number is used for both."""
    pair = (value, value) if _is_number(value) else value
    try:
        connect, read = pair
    except (TypeError, ValueError):
        connect = read = None
    if _is_number(connect) and _is_number(read) and 0 < connect <= 30 and 0 < read <= 60:
        return (float(connect), float(read))
    raise ValueError(
        "(connect, read) seconds, each above 0, connect at most 30 and read at most 60"
    )


def webhook_secret_entries(value: Any) -> list[str] | None:
    """``WEBHOOK_SECRETS`` as written, split at commas and stripped, blanks kept so that the
    checks can name them by position; None when it is not a string or a list of strings.

    ``"whsec_new, whsec_old"`` (a comma string, or the README's ``os.environ[...].split(",")``)
    gives ``["whsec_new", "whsec_old"]``; Nomos secrets never contain a comma or a space.
    """
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        return None
    return [part.strip() for entry in value for part in entry.split(",")]


def secrets(value: Any) -> list[str]:
    entries = webhook_secret_entries(value)
    if entries is None:
        raise ValueError("a list of signing secrets (newest first), or one comma-separated string")
    return entries


def http_url(value: Any) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http(s) URL")
    return str(value).rstrip("/")


def checkout_url(value: Any) -> str:
    """https, or plain http to a sandbox on loopback: the URL carries a signed user reference."""
    parts = urlsplit(value) if isinstance(value, str) else None
    host = parts.hostname if parts is not None else None
    if (
        parts is None
        or not host
        or parts.username
        or parts.password
        or parts.fragment
        or not (parts.scheme == "https" or (parts.scheme == "http" and is_loopback(host)))
    ):
        raise ValueError("None or the https URL of the plan's hosted checkout")
    return str(value)


def dotted_paths(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError("a list of dotted paths")


def prefix_list(value: Any) -> list[Any]:
    """Any list at run time: ``deeplinks.matches_prefix`` skips the entries that are not paths,
    where falling back to the default (any safe path) would widen it (``path_prefixes`` is the
    check's reading)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return path_prefixes(value)


def checkout_url_text(value: Any) -> str:
    """Any string at run time (``linking.checkout_url`` keeps its query and drops a fragment);
    ``checkout_url`` is the check's reading."""
    return text(value)


def path_prefixes(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)) and all(
        isinstance(p, str) and p.startswith("/") and not p.startswith("//") for p in value
    ):
        return list(value)
    raise ValueError("None or a list of paths starting with one '/'")


def _is_host(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and "/" not in value


def host_names(value: Any) -> list[str]:
    """The host names of a list, lowercased; entries that are not one are skipped at run time,
    never widening the list to the default (``strict_host_names`` is the check's reading)."""
    if isinstance(value, (list, tuple)) and value:
        return [h.lower() for h in value if _is_host(h)]
    return strict_host_names(value)


def strict_host_names(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)) and value and all(_is_host(h) for h in value):
        return [h.lower() for h in value]
    raise ValueError("None or a non-empty list of host names (a leading '.' matches any subdomain)")


def is_rate(value: Any) -> bool:
    """True for a (requests, seconds) pair of whole numbers within the bounds."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return False
    requests, seconds = value
    return all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= high
        for v, high in ((requests, MAX_RATE_REQUESTS), (seconds, MAX_RATE_WINDOW))
    )


DEFAULT_RATE_LIMITS: dict[str, tuple[int, int] | None] = {
    "portal": (20, 60),  # portal clicks and portal/link/ together
    "signup": (5, 600),  # sign-up forms sent (POST /leads)
    "recent_checkout": (5, 300),  # clicks asking Nomos about the user's recent leads
}


def rate_limits(value: Any) -> dict[str, tuple[int, int] | None]:
    """Every scope as (requests, seconds) or None; a scope left out or not such a pair keeps
    its default (the checks name it)."""
    if not isinstance(value, dict):
        raise ValueError("a dict of scope -> (requests, seconds) or None")
    limits = dict(DEFAULT_RATE_LIMITS)
    for scope in limits:
        pair = value.get(scope, limits[scope])
        if pair is None:
            limits[scope] = None
        elif is_rate(pair):
            limits[scope] = (int(pair[0]), int(pair[1]))
    return limits


def api_rate(value: Any) -> float:
    """Requests per second; 0 (None too) switches the site's own limiter off."""
    if value is None:
        return 0.0
    return float(number(0, MAX_RATE_REQUESTS)(value))
