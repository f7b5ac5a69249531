"""The site's share of Nomos' rate limit: one request budget per second for every process.

Not to be confused with ``budget`` (the *time* one request may spend on Nomos) nor with
``ratelimit`` (how often *one signed-in user* may click). Nomos allows ``API_RATE_LIMIT``
requests per second per API client (10) and answers 429 above it; every click, every webhook's
fetch and every sync page of the site spends from that one allowance. ``acquire()`` is called by
the client before each HTTP attempt (``client.py`` the first one, ``retry.py`` each retry) and waits
until the attempt fits:

- **Shared.** The attempts are counted in ``TOKEN_CACHE`` (shared by all workers on all hosts),
  in slots of ``SLOT`` seconds. An attempt goes when the current slot and the ``SLOTS`` before
  it (one second and one slot: a second measured anywhere, at Nomos too, never holds more)
  hold fewer than the limit. One ``add``/``incr`` and one ``get_many`` per attempt; a refused
  attempt gives its count back.
- **Priorities.** The caller's kind of work (``priority``, a context variable that the click
  views, webhook processing and the sync set) decides how much of the window it may fill: a
  click all of it, webhook processing ``SHARES["webhook"]`` and a sync or catch-up
  ``SHARES["background"]``. So a backlog or a sync of 100k subscriptions never spends what a
  click needs: clicks are served first, webhooks next, syncs last. The room kept for clicks
  also grows with the clicks of the last ``CLICK_SECONDS`` (``click_room``): clicks come at
  random moments, and a fixed share keeps too little room for the few that come together,
  which would then wait behind a backlog.
- **Nomos' own word.** When an answer carries ``ratelimit-limit`` / ``ratelimit-remaining`` /
  ``ratelimit-reset`` (IETF draft), a limit lower than ours is followed, and a ``remaining``
  that leaves only what higher priorities need pauses the lower ones until ``reset``, in every
  process (someone else may share the credentials). A 429's ``Retry-After`` pauses everyone.
  Without those headers the counting alone keeps the site under the limit.
- **Inside the time budget.** A wait never outlasts the request's ``budget``: a click that
  cannot get its turn in time gets ``RateBudgetExhausted`` (a ``NomosUnavailable``: the 503
  page) instead of a late answer. Code outside any budget (a sync) waits as long as it takes.
- **The cache is an optimisation.** When ``TOKEN_CACHE`` fails, ``SharedCache`` counts in this
  process; each process then keeps to its share of the limit, the limit divided by the number
  of processes that used Nomos in the last minutes (counted while the cache answered). Nothing
  raises.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

from . import budget
from .conf import nomos_settings
from .httpdates import retry_after_seconds
from .setting_parsers import MAX_RATE_REQUESTS
from .shared_cache import SharedCache, token_cache

logger = logging.getLogger("nomos_billing.api_rate")

__all__ = [
    "SHARES",
    "Priority",
    "RateBudgetExhausted",
    "acquire",
    "click_room",
    "current_priority",
    "observe",
    "prepaid",
    "priority",
    "sustained_rate",
    "sustained_rate_beside_clicks",
]

Priority = Literal["click", "webhook", "background"]
#: The part of the window each kind of work may fill: what a lower one leaves is the room the
#: higher ones keep, whatever the lower ones have queued.
SHARES: Mapping[str, float] = {"click": 1.0, "webhook": 0.8, "background": 0.5}
#: Seconds per counting slot, and slots before the current one that a window spans: 1.1 to
#: 1.2 s, so that a request's way to Nomos may take up to a slot longer than the one before it
#: without Nomos counting more than the limit in one of its seconds.
SLOT = 0.1
SLOTS = 11
#: Seconds a turn counts for (the window).
WINDOW = (SLOTS + 1) * SLOT
#: The clicks of the last this many seconds tell how much room to keep for the next ones.
CLICK_SECONDS = 10
CLICK_SLOTS = round(CLICK_SECONDS / SLOT)
#: How sure a click may be to find a turn free, however much other work is queued.
CLICK_CONFIDENCE = 0.99
#: A click adds this to its slot's count, any other turn 1: one atomic count per slot keeps
#: the window exact (as one key per kind would not) and tells the clicks apart. Above the
#: most turns of other kinds a slot can hold (the largest ``API_RATE_LIMIT`` allowed).
CLICK_WEIGHT = 10 * MAX_RATE_REQUESTS
#: Seconds a slot's count is kept (the clicks' history, and the window's 1.2 s).
KEY_TIMEOUT = CLICK_SECONDS + 1
#: Processes are counted per period of this many seconds (for the share when the cache fails).
PROCESS_PERIOD = 60

#: Work that names no priority (a site's own calls, a replay, an admin action) goes between
#: clicks and syncs; the sync command marks itself ``background``.
_priority: ContextVar[Priority] = ContextVar("nomos_billing_api_priority", default="webhook")
#: True when the caller took the turn of the next request already (``prepaid``).
_prepaid: ContextVar[bool] = ContextVar("nomos_billing_api_prepaid", default=False)


class RateBudgetExhausted(budget.BudgetExhausted):
    """The request's time budget ended before Nomos' rate limit had room for it."""


@contextmanager
def priority(kind: Priority) -> Iterator[None]:
    """Calls to Nomos inside the block count as ``kind`` of work (see ``SHARES``)."""
    token = _priority.set(kind)
    try:
        yield
    finally:
        _priority.reset(token)


@contextmanager
def prepaid() -> Iterator[None]:
    """The next request inside the block uses a turn the caller took with ``acquire`` (a
    shared fetch takes it before it stops gathering the events that wait for it)."""
    token = _prepaid.set(True)
    try:
        yield
    finally:
        _prepaid.reset(token)


def current_priority() -> Priority:
    """The kind of work calling now (``webhook`` where nobody said)."""
    return _priority.get()


def configured_limit() -> float:
    """``API_RATE_LIMIT`` (requests per second); 0 when switched off (None or 0)."""
    return nomos_settings.API_RATE_LIMIT


def sustained_rate(kind: Priority, limit: float | None = None) -> float:
    """Requests per second ``kind`` of work gets while it has the budget to itself: its part of
    the window (``SHARES``) once per window span, since a turn counts for ``SLOTS`` + 1 slots.
    ``limit``: requests per second (default ``API_RATE_LIMIT``); ``inf`` when there is none.

    What a backlog drains at and task workers are sized for (docs: the task queue how-to)."""
    limit = configured_limit() if limit is None else limit
    if limit <= 0:
        return math.inf
    return _allowed(limit, kind) / WINDOW


class SiteRate:
    """The counters of one API client (credentials and base URL) in one cache."""

    def __init__(self, cache: SharedCache, namespace: str) -> None:
        self.cache = cache
        self.prefix = f"nomos_billing:rate:{namespace}:"
        self._lock = threading.Lock()
        # What Nomos said (per process: a hint refreshed by every answer).
        self._nomos_limit: float | None = None
        self._registered: int | None = None
        self._processes = 1

    # -- asking for a turn --------------------------------------------------------------------

    def acquire(self, kind: Priority, what: str = "a Nomos call") -> None:
        """Return once an attempt of ``kind`` fits; ``RateBudgetExhausted`` if not in time."""
        while True:
            wait = self.try_acquire(kind)
            if wait <= 0:
                return
            left = budget.remaining()
            if left is not None and left - wait < budget.MIN_ATTEMPT:
                raise RateBudgetExhausted(
                    f"Nomos' rate limit had no room for {what} within this request's budget",
                    # The 503 page's Retry-After: when the turn would have come.
                    retry_after=max(1, math.ceil(wait)),
                )
            # A little jitter, so that the processes refused together do not return together.
            time.sleep(wait + random.uniform(0, SLOT / 2))

    def try_acquire(self, kind: Priority, now: float | None = None) -> float:
        """Take a turn if one is free now: 0.0, else the seconds to wait before asking again."""
        limit = self.limit()
        if not limit:
            return 0.0
        now = time.time() if now is None else now
        slot = math.floor(now / SLOT)
        keys = [self._slot_key(slot - back) for back in range(1, SLOTS + 1)]
        # Only the kinds below clicks need the clicks' history.
        history = (
            []
            if kind == "click"
            else [self._slot_key(slot - back) for back in range(SLOTS + 1, CLICK_SLOTS + 1)]
        )
        pause_key = self.prefix + "pause:" + kind
        found = self.cache.get_many([*keys, *history, pause_key, *self._process_keys(now)])
        paused_until = found.get(pause_key)
        if isinstance(paused_until, (int, float)) and paused_until > now:
            return float(paused_until - now)
        self._count_processes(now, found)
        # Each process counting alone (the cache failed) keeps to its part of what all may use.
        processes = self._processes if self.cache.failing else 1
        allowed = _allowed(limit, kind, processes)
        before, clicks = _turns(*(found.get(k) for k in keys))
        others = before - clicks
        left = math.inf
        if kind != "click":
            recent = clicks + _turns(*(found.get(k) for k in history))[1]
            left = _left_by_clicks(limit / processes, recent / CLICK_SECONDS)
        if before >= allowed or others >= left:
            return self._wait_for_room(slot, now)
        key, weight = self._slot_key(slot), CLICK_WEIGHT if kind == "click" else 1
        mine, mine_clicks = _turns(self._count(key, weight))
        if before + mine <= allowed and others + mine - mine_clicks <= left:
            return 0.0
        self._give_back(key, weight)
        return self._wait_for_room(slot, now)

    def limit(self) -> float:
        """Requests per second: ``API_RATE_LIMIT``, or Nomos' own ``ratelimit-limit`` if lower."""
        limit = configured_limit()
        nomos = self._nomos_limit
        if limit and nomos:
            return min(limit, nomos)
        return limit

    @staticmethod
    def _wait_for_room(slot: int, now: float) -> float:
        # The oldest slot of the window leaves it at the end of the current one.
        return max(0.001, (slot + 1) * SLOT - now)

    def _slot_key(self, slot: int) -> str:
        return f"{self.prefix}slot:{slot}"

    def _count(self, key: str, weight: int) -> int:
        if self.cache.add(key, weight, KEY_TIMEOUT):
            return weight
        try:
            return self.cache.incr(key, weight)
        except ValueError:  # expired between the two calls
            self.cache.add(key, weight, KEY_TIMEOUT)
            return weight

    def _give_back(self, key: str, weight: int) -> None:
        try:
            self.cache.incr(key, -weight)
        except ValueError:
            pass

    # -- how many processes share the limit ---------------------------------------------------

    def _process_keys(self, now: float) -> list[str]:
        period = int(now // PROCESS_PERIOD)
        return [f"{self.prefix}procs:{p % 3}" for p in (period, period - 1)]

    def _count_processes(self, now: float, found: Mapping[str, object]) -> None:
        if self.cache.failing:
            return  # keep what was counted while the cache answered
        period = int(now // PROCESS_PERIOD)
        current, previous = self._process_keys(now)
        counts = [found.get(current), found.get(previous)]
        known = [c for c in counts if isinstance(c, int)]
        if self._registered != period:
            self._registered = period
            # Three periods round the ring: a key has expired (two periods) before its reuse.
            if self.cache.add(current, 1, 2 * PROCESS_PERIOD):
                known.append(1)
            else:
                try:
                    known.append(self.cache.incr(current))
                except ValueError:
                    self.cache.add(current, 1, 2 * PROCESS_PERIOD)
        self._processes = max([1, *known])

    # -- what Nomos says --------------------------------------------------------------------

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """Follow an answer's ``ratelimit-*`` headers and a 429's ``Retry-After``."""
        limit = _number(headers.get("ratelimit-limit"))
        if limit is not None and limit > 0:
            self._nomos_limit = limit
        now = time.time()
        if status == 429:
            wait = retry_after_seconds(headers)
            reset = _number(headers.get("ratelimit-reset"))
            self._pause(list(SHARES), now + (wait if wait is not None else reset or 1.0))
            return
        remaining = _number(headers.get("ratelimit-remaining"))
        reset = _number(headers.get("ratelimit-reset"))
        if remaining is None or reset is None or reset <= 0:
            return
        ceiling = self.limit() or limit or 0
        # What is left is kept for the kinds of work above the ones it no longer covers.
        kinds = [k for k in SHARES if remaining <= ceiling - _allowed(ceiling, k)]
        if kinds:
            self._pause(kinds, now + min(reset, 60.0))

    def _pause(self, kinds: list[str], until: float) -> None:
        timeout = max(1, math.ceil(until - time.time()) + 1)
        for kind in kinds:
            self.cache.set(self.prefix + "pause:" + kind, until, timeout)


def _allowed(limit: float, kind: str, processes: int = 1) -> int:
    """Requests of ``kind`` a window may hold: at least one, so that no kind waits forever."""
    return max(1, math.floor(limit * SHARES[kind] / processes + 1e-9))


def _turns(*counts: object) -> tuple[int, int]:
    """``(turns, of them clicks)`` in slots' counts (``CLICK_WEIGHT``)."""
    total = sum(_count_of(c) for c in counts)
    clicks = total // CLICK_WEIGHT
    return total - clicks * (CLICK_WEIGHT - 1), clicks


def _count_of(value: object) -> int:
    # A counter the cache incremented comes back as an int from Redis and local memory, as
    # the bytes of its digits from memcached (pymemcache); anything else counts nothing.
    try:
        return int(value) if isinstance(value, (int, str, bytes)) else 0
    except ValueError:
        return 0


def click_room(click_rate: float) -> int:
    """Turns a window keeps free for clicks that come at ``click_rate`` a second, at random
    moments: the fewest ``r`` such that ``r`` or more clicks fall in one window with a chance
    below ``1 - CLICK_CONFIDENCE`` (Poisson), so that a click finds a turn free; 0 when no
    click came."""
    mean = click_rate * WINDOW
    if mean <= 0:
        return 0
    term = below = math.exp(-mean)
    room = 1
    while below < CLICK_CONFIDENCE:
        term *= mean / room
        below += term
        room += 1
    return room


def _left_by_clicks(limit: float, click_rate: float) -> int:
    """Turns of a window the other kinds may hold beside the clicks' room: at least one, so
    that no kind waits forever."""
    return max(1, math.floor(limit + 1e-9) - click_room(click_rate))


def sustained_rate_beside_clicks(
    kind: Priority, click_rate: float, limit: float | None = None
) -> float:
    """``sustained_rate`` of ``kind`` while clicks come at ``click_rate`` a second: what a
    backlog drains at on a site in use (docs: the task queue how-to)."""
    limit = configured_limit() if limit is None else limit
    if limit <= 0:
        return math.inf
    if kind == "click":
        return sustained_rate(kind, limit)
    shared = _allowed(limit, kind) / WINDOW - click_rate
    return max(0.0, min(shared, _left_by_clicks(limit, click_rate) / WINDOW))


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(str(value).strip().split(",")[0].split(";")[0])
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


_lock = threading.Lock()
_rates: dict[tuple[str, str], SiteRate] = {}


def site_rate() -> SiteRate:
    """The counters of the configured API client, in the ``TOKEN_CACHE`` alias."""
    # Per cache, client and API; the client and API hashed, so neither is readable in the cache.
    key = (token_cache().alias, nomos_settings.token_cache_key)
    found = _rates.get(key)
    if found is None:
        namespace = hashlib.sha256(key[1].encode()).hexdigest()[:16]
        # A stand-in of its own: a slot key per 0.1 s must not crowd out the token's entry.
        cache = SharedCache(key[0], stand_in=f"rate-{key[0]}", keeps="its own share of the rate")
        with _lock:
            found = _rates.setdefault(key, SiteRate(cache, namespace))
    return found


def acquire(what: str = "a Nomos call") -> None:
    """Wait for a turn of the current kind of work (``priority``) within the time budget."""
    if _prepaid.get():
        _prepaid.set(False)
        return
    if configured_limit():
        site_rate().acquire(current_priority(), what)


def observe(status: int, headers: Mapping[str, str]) -> None:
    """Let an answer from Nomos (any status) adjust the shared budget."""
    if configured_limit():
        site_rate().observe(status, headers)


def reset() -> None:
    """Forget the per-process state (tests; settings changed)."""
    with _lock:
        for rate in _rates.values():
            rate.cache.local.clear()
        _rates.clear()
