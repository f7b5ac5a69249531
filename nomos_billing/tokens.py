"""The OAuth access token, shared by every worker through Django's cache.

Nomos asks integrators to reuse tokens (they live 60 minutes). We keep one token per
(client id, base URL) in the cache alias ``TOKEN_CACHE``, so every process on every host that
shares that cache shares the token. Renewal is single-flight: ``cache.add`` is atomic on every
shared backend, so when many workers find the token missing at once exactly one asks Nomos and
the others wait briefly for the cache to fill.

Each process also keeps its own copy of the token and reads the shared cache again only once that
copy is inside the refresh margin. A click then costs one HTTP call and no cache round trip; the
workers still share one token, since a renewal (the only time a token is fetched) goes through
the cache. A token revoked early is covered by the 401 path, which drops both copies.

When the cache fails, ``shared_cache`` keeps the token (and the renewal lock) inside the
process until it answers again: renewal is then single-flight per process.

Renewal always asks for a new client-credentials token. The ``refresh_token`` Nomos returns is
ignored: RFC 6749 4.4.3 says it is not meant for this grant, and two workers refreshing with the
same refresh token would race.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import breaker, budget, shared_cache
from .breaker import CircuitOpen
from .budget import BudgetExhausted
from .conf import nomos_settings
from .exceptions import NomosUnavailable

logger = logging.getLogger("nomos_billing.tokens")

#: How long a renewal may hold the lock; past this another worker may try.
LOCK_TIMEOUT = 30
POLL_INTERVAL = 0.05
#: After a failed token fetch (Nomos down or timing out), other callers fail at once for this
#: many seconds instead of trying again one after the other; then one of them tries again.
FAILED_FETCH_TTL = 5


@dataclass(frozen=True)
class AccessToken:
    # repr=False: a token in a traceback or a log line is a leaked credential.
    value: str = field(repr=False)
    expires_at: float
    scope: str = ""

    def remaining(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)

    @property
    def scopes(self) -> list[str]:
        return self.scope.split()

    def as_cache_value(self) -> dict[str, Any]:
        return {"value": self.value, "expires_at": self.expires_at, "scope": self.scope}

    @classmethod
    def from_cache_value(cls, data: Any) -> AccessToken | None:
        try:
            return cls(str(data["value"]), float(data["expires_at"]), str(data.get("scope", "")))
        except (TypeError, KeyError, ValueError):
            return None


Fetcher = Callable[[], AccessToken]


class TokenStore:
    """Reads, renews and drops the shared token. ``fetch`` asks Nomos for a new one."""

    def __init__(self, fetch: Fetcher, *, wait_timeout: float | None = None) -> None:
        self._fetch = fetch
        self._wait_timeout = wait_timeout
        # (cache key, token): the key guards against settings changed under a live store.
        self._local: tuple[str, AccessToken] | None = None

    @property
    def cache(self) -> Any:
        # Never the bare alias: an unreachable cache must not fail the click (shared_cache.py).
        return shared_cache.token_cache()

    @property
    def key(self) -> str:
        return nomos_settings.token_cache_key

    @property
    def margin(self) -> float:
        return nomos_settings.TOKEN_REFRESH_MARGIN

    def cached(self) -> AccessToken | None:
        return AccessToken.from_cache_value(self.cache.get(self.key))

    def get(self) -> AccessToken:
        """A token with more than the refresh margin left, renewing it if needed."""
        key = self.key
        local = self._local
        if local is not None and local[0] == key and local[1].remaining() > self.margin:
            return local[1]
        token = self.cached()
        if token is None or token.remaining() <= self.margin:
            token = self._renew(current=token)
        self._local = (key, token)
        return token

    def invalidate(self, rejected: AccessToken) -> None:
        """Drop the cached token, unless another worker has already replaced it."""
        local = self._local
        if local is not None and local[1].value == rejected.value:
            self._local = None
        cached = self.cached()
        if cached is not None and cached.value == rejected.value:
            self.cache.delete(self.key)

    def _renew(self, current: AccessToken | None) -> AccessToken:
        lock_key = self.key + ":lock"
        deadline = time.monotonic() + self._wait_seconds()
        if current is None or current.remaining() <= 1:
            self._raise_if_just_failed()
        while True:
            owner = secrets.token_hex(8)
            if self.cache.add(lock_key, owner, LOCK_TIMEOUT):
                try:
                    # Someone may have renewed between our read and our lock.
                    token = self.cached()
                    if token is not None and token.remaining() > self.margin:
                        return token
                    return self._fetch_and_store()
                finally:
                    if self.cache.get(lock_key) == owner:
                        self.cache.delete(lock_key)
            # Another worker is renewing. A token inside its margin is still valid: use it.
            if current is not None and current.remaining() > 1:
                return current
            # Wait for the renewer's token; if the lock goes away without one (its fetch
            # failed), loop and try to become the renewer, so retries stay single-flight too.
            while self.cache.get(lock_key) is not None:
                if time.monotonic() >= deadline:
                    # The renewer is stuck (or died holding the lock): do not wait forever.
                    return self._fetch_and_store()
                time.sleep(POLL_INTERVAL)
            token = self.cached()
            if token is not None and token.remaining() > 1:
                return token
            self._raise_if_just_failed()
            if time.monotonic() >= deadline:
                return self._fetch_and_store()

    def _raise_if_just_failed(self) -> None:
        """Share a renewer's failure: while Nomos just failed to give a token, the waiters and
        the next callers fail at once instead of each waiting out its own timeout."""
        if not breaker.enabled():
            return
        failed = self.cache.get(self.key + ":failed")
        if isinstance(failed, dict):
            raise NomosUnavailable(
                "the Nomos token fetch failed moments ago in another worker "
                f"({failed.get('reason', 'unavailable')})",
                retry_after=FAILED_FETCH_TTL,
            )

    def _fetch_and_store(self) -> AccessToken:
        try:
            token = self._fetch()
        except (BudgetExhausted, CircuitOpen):
            # This request ran out of its own time, or the breaker refused the call: Nomos did
            # not fail just now, so other workers must not be told it did.
            raise
        except NomosUnavailable as exc:
            if breaker.enabled():
                # The exception's type only: the shared record stays short and secret-free.
                reason = type(exc).__name__
                self.cache.set(self.key + ":failed", {"reason": reason}, FAILED_FETCH_TTL)
            raise
        if breaker.enabled():
            self.cache.delete(self.key + ":failed")
        # Keep it until it expires; renewal starts `margin` seconds before that.
        self.cache.set(self.key, token.as_cache_value(), max(1, int(token.remaining())))
        logger.info("Fetched a new Nomos access token (expires in %d s)", token.remaining())
        return token

    def _wait_seconds(self) -> float:
        if self._wait_timeout is not None:
            wait = self._wait_timeout
        else:
            connect, read = nomos_settings.TIMEOUT
            wait = connect + read + 1
        # Never past the request's deadline: a waiter that runs out then tries the fetch
        # itself, which the budget refuses at once (BudgetExhausted).
        left = budget.remaining()
        return wait if left is None else max(0.0, min(wait, left))
