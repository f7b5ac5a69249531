"""The cache all workers share (``TOKEN_CACHE``), with this process standing in while it fails.

The shared cache is an optimisation: through it the workers share one access token, one outage
breaker and the memory of a token fetch that just failed. It must never be what takes the site
down. When the cache is unreachable or raises (Redis stopped, a wrong password, a full
Memcached), every read and write goes to a small cache inside this process instead:

- the token is fetched once and shared by the process's threads (the renewal lock is then an
  in-process lock, so renewal stays single-flight per process);
- the breaker counts and opens per process;
- the shared cache is tried again every ``RETRY_AFTER`` seconds, so a cache that hangs costs
  one request per period its timeout, not every request;
- one WARNING per ``WARN_EVERY`` seconds per process names the cache alias and the exception's
  type, never its message (a connection error can carry the cache URL and its password).

When the cache answers again, one INFO line says so and the process's stand-in is emptied.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache

from .conf import nomos_settings

logger = logging.getLogger("nomos_billing.shared_cache")

__all__ = ["RETRY_AFTER", "WARN_EVERY", "SharedCache", "reset", "token_cache"]

#: Seconds between two tries of a cache that failed.
RETRY_AFTER = 10.0
#: Seconds between two WARNING lines about the same cache in one process.
WARN_EVERY = 300.0


class SharedCache:
    """The subset of Django's cache API the package uses, falling back to this process."""

    def __init__(
        self,
        alias: str,
        *,
        stand_in: str = "",
        keeps: str = "its own Nomos token and outage breaker",
    ) -> None:
        """``stand_in`` names a stand-in of its own (keys that churn must not cull the
        token's); ``keeps`` says in the warning what the process then keeps alone."""
        self.alias = alias
        self.keeps = keeps
        # A name of our own: LocMemCache instances with one name share their storage.
        self.local = LocMemCache(
            f"nomos_billing-stand-in-{stand_in or alias}", {"OPTIONS": {"MAX_ENTRIES": 1000}}
        )
        self._lock = threading.Lock()
        self._retry_at: float | None = None  # monotonic; None while the cache answers
        self._warned_at: float | None = None

    @property
    def failing(self) -> bool:
        """True while this process uses its stand-in."""
        return self._retry_at is not None

    def get(self, key: str, default: Any = None) -> Any:
        return self._call("get", key, default)

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("get_many", keys)
        return result

    def set(self, key: str, value: Any, timeout: float | None) -> None:
        self._call("set", key, value, timeout)

    def add(self, key: str, value: Any, timeout: float | None) -> bool:
        return bool(self._call("add", key, value, timeout))

    def incr(self, key: str, delta: int = 1) -> int:
        """Like Django's ``incr``: ``ValueError`` when the key is missing (in either cache)."""
        result: int = self._call("incr", key, delta)
        return result

    def delete(self, key: str) -> bool:
        return bool(self._call("delete", key))

    def delete_many(self, keys: list[str]) -> None:
        self._call("delete_many", keys)

    def _call(self, method: str, *args: Any) -> Any:
        retry_at = self._retry_at
        if retry_at is not None and time.monotonic() < retry_at:
            return getattr(self.local, method)(*args)
        try:
            result = getattr(caches[self.alias], method)(*args)
        except ValueError:
            if method == "incr":  # the key is missing: an answer, not a failure
                raise
            self._failed(ValueError)
        except Exception as exc:
            self._failed(type(exc))
        else:
            if retry_at is not None:
                self._recovered()
            return result
        return getattr(self.local, method)(*args)

    def _failed(self, kind: type[BaseException]) -> None:
        now = time.monotonic()
        with self._lock:
            self._retry_at = now + RETRY_AFTER
            warn = self._warned_at is None or now - self._warned_at >= WARN_EVERY
            if warn:
                self._warned_at = now
        if warn:
            logger.warning(
                "The cache %r (NOMOS_BILLING['TOKEN_CACHE']) failed (%s): this process keeps "
                "%s until it answers again (next try in %g s).",
                self.alias,
                kind.__name__,
                self.keeps,
                RETRY_AFTER,
            )

    def _recovered(self) -> None:
        with self._lock:
            if self._retry_at is None:
                return
            self._retry_at = None
        # What this process learned alone must not outlive the outage (an open breaker).
        self.local.clear()
        logger.info(
            "The cache %r answers again: the token and breaker are shared again", self.alias
        )


_lock = threading.Lock()
_by_alias: dict[str, SharedCache] = {}


def token_cache() -> SharedCache:
    """The ``TOKEN_CACHE`` alias's ``SharedCache`` (one per alias and process)."""
    alias = nomos_settings.TOKEN_CACHE
    found = _by_alias.get(alias)
    if found is None:
        with _lock:
            found = _by_alias.setdefault(alias, SharedCache(alias))
    return found


def reset() -> None:
    """Forget failures and stand-in contents (tests; settings changed)."""
    with _lock:
        for cache in _by_alias.values():
            cache.local.clear()
        _by_alias.clear()
