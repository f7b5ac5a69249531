"""The outage breaker: fail fast while Nomos is down, shared by every worker through the cache.

Without it, every click and every webhook during an outage waits out its own timeouts before
showing the 503 page, and a few sync workers are all busy waiting. With it:

- after ``BREAKER_FAILURES`` Nomos failures in a row (could not connect, timed out, 5xx, which
  includes a failed token fetch) the breaker opens: every call fails at once with
  ``NomosUnavailable`` (``CircuitOpen``) for ``BREAKER_COOLDOWN`` seconds;
- then one call, in one worker, is let through as a probe (``cache.add`` decides who); its
  success closes the breaker for everyone, its failure opens it for another cool-down;
- any answer from Nomos that is not an outage (2xx, 4xx, 429) counts as a success.

The state lives in the token cache (``TOKEN_CACHE``: the cache every worker shares), keyed by
the API URL. Each process reads it at most once per ``REFRESH`` seconds while nothing fails, so
a click does not pay a cache read for it. One log line when the breaker opens, one when it
closes (the worker whose ``cache.add`` / ``cache.delete`` did it writes it).
While that cache fails, each process keeps its own breaker (``shared_cache``).
``BREAKER_FAILURES = 0`` switches the breaker off.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from . import shared_cache
from .conf import nomos_settings
from .exceptions import NomosUnavailable

logger = logging.getLogger("nomos_billing.breaker")

__all__ = ["CircuitOpen", "allow", "enabled", "record_failure", "record_success", "state"]

#: How long a process trusts its last look at the shared state while nothing fails.
REFRESH = 1.0


class CircuitOpen(NomosUnavailable):
    """Nomos failed repeatedly; calls fail at once until the cool-down's probe succeeds."""


@dataclass(frozen=True)
class State:
    """What ``nomos_check_credentials`` and the health page show."""

    enabled: bool
    open: bool
    failures: int
    #: Seconds until a probe may be sent (0 when closed or when a probe is due).
    retry_in: float

    @property
    def word(self) -> str:
        """ "off", "closed" or "open", for a status line or monitoring."""
        if not self.enabled:
            return "off"
        return "open" if self.open else "closed"


_local = threading.local()
_lock = threading.Lock()
_snapshot: dict[str, tuple[float, float | None, int]] = {}  # key -> (read at, open until, fails)


def _threshold() -> int:
    return nomos_settings.BREAKER_FAILURES


def enabled() -> bool:
    """False when ``BREAKER_FAILURES = 0`` switched failing fast off (breaker and shared token
    failures alike)."""
    return _threshold() > 0


def _cooldown() -> float:
    return nomos_settings.BREAKER_COOLDOWN


def _cache() -> Any:
    return shared_cache.token_cache()


def _key() -> str:
    return _key_for(nomos_settings.API_BASE_URL)


@functools.lru_cache(maxsize=16)
def _key_for(base_url: str) -> str:
    # Cached: every API call asks at least twice (allow, then record_*).
    digest = hashlib.sha256(base_url.encode()).hexdigest()[:24]
    return f"nomos_billing:breaker:{digest}"


def _read(key: str, *, fresh: bool = False) -> tuple[float | None, int]:
    now = time.monotonic()
    with _lock:
        seen = _snapshot.get(key)
    if seen is not None and not fresh and now - seen[0] < REFRESH:
        return seen[1], seen[2]
    values = _cache().get_many([key + ":open", key + ":failures"])
    open_until = values.get(key + ":open")
    failures = values.get(key + ":failures") or 0
    open_until = float(open_until) if isinstance(open_until, (int, float)) else None
    failures = int(failures) if isinstance(failures, int) else 0
    with _lock:
        _snapshot[key] = (now, open_until, failures)
    return open_until, failures


def _forget(key: str) -> None:
    with _lock:
        _snapshot.pop(key, None)


def reset() -> None:
    """Forget this process's view of the shared state (settings changed, tests)."""
    with _lock:
        _snapshot.clear()
    _local.probe = False


def allow(what: str) -> None:
    """Raise ``CircuitOpen`` unless a call to Nomos may be made now."""
    _local.probe = False
    if not _threshold():
        return
    key = _key()
    open_until, _ = _read(key)
    if open_until is None:
        return
    now = time.time()
    if now < open_until:
        raise CircuitOpen(
            f"Nomos is failing; {what} not sent (outage breaker open)",
            retry_after=max(1, math.ceil(open_until - now)),
        )
    connect, read = nomos_settings.TIMEOUT
    # The probe's lock outlives a probe that hangs to its timeouts, not a worker that died.
    if not _cache().add(key + ":probe", 1, max(1, math.ceil(connect + read))):
        raise CircuitOpen(
            f"Nomos is failing; {what} not sent (another worker is probing)",
            retry_after=max(1, math.ceil(_cooldown())),
        )
    _local.probe = True


def record_success() -> None:
    """Nomos answered: close the breaker if this process has seen it failing or open."""
    if not _threshold():
        return
    key = _key()
    open_until, failures = _read(key)
    if open_until is None and not failures and not getattr(_local, "probe", False):
        return
    cache = _cache()
    cache.delete_many([key + ":failures", key + ":probe"])
    if cache.delete(key + ":open"):
        logger.warning("Nomos outage breaker closed: Nomos answers again")
    _local.probe = False
    _forget(key)


def record_failure(why: str) -> None:
    """Nomos failed (``why``: "could not connect", "timed out", "HTTP 503", ...)."""
    threshold = _threshold()
    if not threshold:
        return
    key, cache, cooldown = _key(), _cache(), _cooldown()
    # Failures count as "in a row" within a few cool-downs; an old one expires.
    window = max(60, math.ceil(cooldown * 6))
    cache.add(key + ":failures", 0, window)
    try:
        failures = cache.incr(key + ":failures")
    except ValueError:  # expired between add and incr
        cache.add(key + ":failures", 1, window)
        failures = 1
    open_until, _ = _read(key, fresh=True)
    probing = getattr(_local, "probe", False)
    _local.probe = False
    if open_until is None and failures < threshold:
        return
    until = time.time() + cooldown
    if cache.add(key + ":open", until, None):
        logger.warning(
            "Nomos outage breaker opened after %d failures in a row (last: %s): calls fail at "
            "once for %g s, then one probe decides",
            failures,
            why,
            cooldown,
        )
    elif probing:
        cache.set(key + ":open", until, None)
        cache.delete(key + ":probe")
    _forget(key)


def state() -> State:
    """The shared state, read now."""
    threshold = _threshold()
    if not threshold:
        return State(enabled=False, open=False, failures=0, retry_in=0.0)
    open_until, failures = _read(_key(), fresh=True)
    if open_until is None:
        return State(enabled=True, open=False, failures=failures, retry_in=0.0)
    return State(
        enabled=True, open=True, failures=failures, retry_in=max(0.0, open_until - time.time())
    )
