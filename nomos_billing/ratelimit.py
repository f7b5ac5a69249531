"""Per-user limits on the requests that make Nomos calls.

One signed-in account clicking in a loop would otherwise spend the site's Nomos rate limit (10
requests per second per API client, shared by every user and every webhook). ``hit(user, scope)``
counts one request of ``user`` in ``scope`` and raises ``RateLimited`` (``retry_after`` set) when
``RATE_LIMITS[scope]`` is used up, before any Nomos call; the views answer it with 429 (the
``rate_limited.html`` page, or JSON from ``portal/link/``). The scopes:

- ``portal``: portal clicks and ``portal/link/`` together (each mints a magic link);
- ``signup``: sign-up forms sent (each creates a lead);
- ``recent_checkout``: clicks of a user who is not linked yet that ask Nomos about their recent
  leads (``leads.link_recent_checkout``, up to ``RECENT_CHECKOUT_LEADS`` calls each).

The counter is a sliding window made of two fixed ones: the current window's count plus the
previous window's, weighted by how much of it the sliding window still covers. Unlike a fixed
window it never lets twice the limit through around a window's end, and unlike a log of
timestamps it is two integers per user and scope. An allowed request costs one increment (plus a
read of the previous window early in a window or close to the limit); a refused one is taken
back, so a loop that keeps clicking does not push its own wait further out.

The cache (``RATE_LIMIT_CACHE``) is an optimisation, never a dependency: when it fails, counting
moves to this process's memory for ``CACHE_RETRY`` seconds (each worker then limits on its own:
looser, never a 500 and never refusing everyone), with one WARNING per cool-down naming the cache.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from typing import Any

from django.core.cache import BaseCache, caches
from django.core.cache.backends.locmem import LocMemCache

from .conf import nomos_settings
from .exceptions import RateLimited

logger = logging.getLogger("nomos_billing.ratelimit")

SCOPES = ("portal", "signup", "recent_checkout")
KEY_PREFIX = "nomos_billing:ratelimit:"
#: Seconds of counting in memory after the cache failed, before the cache is tried again: a
#: cache that is down must not cost every click a connection attempt.
CACHE_RETRY = 10.0

#: The counters while the cache is failing, private to this process.
_local = LocMemCache("nomos_billing-ratelimit", {"OPTIONS": {"MAX_ENTRIES": 10_000}})
_state_lock = threading.Lock()
_cache_failed_until = 0.0
#: (scope, user) -> the window whose refusal was logged: one line per window, not per click.
_refusals_logged: dict[tuple[str, str], int] = {}


def hit(user: Any, scope: str) -> None:
    """Count one request of ``user`` in ``scope``; raise ``RateLimited`` when it does not fit.

    Anonymous users and scopes switched off (``None``) are not counted.
    """
    limit = nomos_settings.rate_limit(scope)
    pk = getattr(user, "pk", None)
    if limit is None or pk is None or not getattr(user, "is_authenticated", False):
        return
    requests, window = limit
    now = time.time()
    ident = f"{scope}:{_user_key(pk)}"
    retry_after = _count(ident, requests, window, now)
    if retry_after is None:
        return
    _log_refusal(scope, pk, requests, window, now, retry_after)
    raise RateLimited(scope, retry_after)


def reset() -> None:
    """Forget the in-process counters and the cache's failure (tests; a site's own tooling)."""
    global _cache_failed_until
    _local.clear()
    with _state_lock:
        _cache_failed_until = 0.0
        _refusals_logged.clear()


def _user_key(pk: Any) -> str:
    # Integer keys as they are (an operator can find them); anything else hashed, so that no
    # character of a custom primary key can break a cache key (memcached refuses spaces).
    if isinstance(pk, int):
        return str(pk)
    return hashlib.sha256(str(pk).encode()).hexdigest()[:24]


def _count(ident: str, limit: int, window: int, now: float) -> int | None:
    global _cache_failed_until
    if now >= _cache_failed_until:
        alias = nomos_settings.RATE_LIMIT_CACHE
        try:
            return sliding_window(caches[alias], ident, limit, window, now)
        except Exception as exc:  # whatever the backend raises, the click goes on
            with _state_lock:
                _cache_failed_until = now + CACHE_RETRY
            logger.warning(
                "rate limits: the cache %r failed (%s); counting in this process for %g s "
                "(NOMOS_BILLING['RATE_LIMIT_CACHE'])",
                alias,
                type(exc).__name__,
                CACHE_RETRY,
            )
    return sliding_window(_local, ident, limit, window, now)


def sliding_window(cache: BaseCache, ident: str, limit: int, window: int, now: float) -> int | None:
    """Count one request in ``cache``: ``None`` when it fits ``limit`` per ``window`` seconds,
    else the whole seconds until one more would fit (and nothing is counted)."""
    index, into = divmod(now, window)
    current = f"{KEY_PREFIX}{ident}:{int(index)}"
    count = _increment(cache, current, timeout=2 * window + 1)
    weight = (window - into) / window
    # The previous window allowed at most ``limit``: while even that could not tip the count
    # over, it is not read (most clicks, so a click costs the increment alone).
    if count + limit * weight <= limit:
        return None
    before = int(cache.get(f"{KEY_PREFIX}{ident}:{int(index) - 1}", 0))
    if before * weight + count <= limit:
        return None
    # Refused requests do not count: a loop that keeps clicking does not push its wait out.
    cache.decr(current)
    return retry_after(before, count - 1, limit, window, into)


def _increment(cache: BaseCache, key: str, timeout: int) -> int:
    try:
        return cache.incr(key)
    except ValueError:
        # The first request of the window. Kept through the next window, where it is the
        # previous one.
        if cache.add(key, 1, timeout=timeout):
            return 1
        return cache.incr(key)  # another worker added it just now


def retry_after(before: int, count: int, limit: int, window: int, into: float) -> int:
    """Whole seconds until one more request fits, ``into`` seconds into the current window
    with ``count`` requests in it and ``before`` in the previous one."""
    if count + 1 <= limit:
        # This window has room: wait for the previous window's share to shrink enough.
        fits_at = window * (before - (limit - count - 1)) / before if before else into
        wait = fits_at - into
    else:
        # This window is full: in the next one it is the previous window, weighted down.
        wait = (window - into) + window * (count - (limit - 1)) / count
    return max(1, math.ceil(wait))


def _log_refusal(
    scope: str, pk: Any, limit: int, window: int, now: float, retry_after: int
) -> None:
    key, index = (scope, str(pk)), int(now // window)
    with _state_lock:
        if _refusals_logged.get(key) == index:
            return
        if len(_refusals_logged) > 10_000:
            _refusals_logged.clear()
        _refusals_logged[key] = index
    logger.warning(
        "rate limit: user %s made more than %d %s requests in %d s; refused for %d s "
        "(NOMOS_BILLING['RATE_LIMITS'])",
        pk,
        limit,
        scope,
        window,
        retry_after,
    )
