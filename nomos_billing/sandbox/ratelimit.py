"""Nomos' rate limit: ``limit`` requests per second per API client, 429 above it.

Nomos documents the number (10 per second, "Quickstart"), that it answers 429 above it, and
IETF rate-limit headers on every response: ``ratelimit-limit``, ``ratelimit-remaining``,
``ratelimit-reset`` (seconds until the window resets) and ``retry-after``. It does not say how
the second is measured, nor whether refused requests count. Where the documents are silent the
sandbox takes the harsher reading:

- **A sliding second.** A request is refused when the requests that arrived in the second
  before it (it included) are more than ``limit``: no second, wherever it starts, holds more
  than ``limit`` admitted requests. A fixed window (twice the limit across its edge) or a token
  bucket (a full bucket plus a second's refill) would let more through.
- **Refused requests count.** A client that retries at once, without waiting, keeps itself out.
- **Everything on the API host counts**, whatever its credentials (the sandbox has one API
  client): the token request, a 401, a 404. The hosted pages and ``/_sandbox/*`` do not.

The headers' values are whole seconds, as the IETF draft and ``Retry-After`` (RFC 9110) have
them: ``ratelimit-reset`` is when the oldest request in the window leaves it (a unit of the
allowance comes back), ``retry-after`` when a request would be admitted (0 while one would).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

#: Nomos' documented limit ("Quickstart"): requests per second per API client.
NOMOS_RATE_LIMIT = 10
#: The window the limit is counted over, in seconds.
WINDOW = 1.0
#: How many arrival times ``arrivals`` keeps (a long benchmark keeps the newest).
ARRIVALS_KEPT = 20_000


@dataclass(frozen=True)
class Verdict:
    """One request's turn: admitted or not, and the four headers that say so."""

    admitted: bool
    limit: int
    remaining: int
    reset: int
    retry_after: int

    def headers(self) -> list[tuple[str, str]]:
        return [
            ("ratelimit-limit", str(self.limit)),
            ("ratelimit-remaining", str(self.remaining)),
            ("ratelimit-reset", str(self.reset)),
            ("retry-after", str(self.retry_after)),
        ]

    @property
    def message(self) -> str:
        # The document's example, with this refusal's number in it.
        return f"Wait {self.retry_after} seconds before retrying."


class RateLimiter:
    """The sliding-second counter of one API client, and its record for tests.

    ``limit`` 0 switches it off: nothing is refused and no headers are sent (as when Nomos
    omits them, which the OpenAPI document allows).
    """

    def __init__(self, limit: int = NOMOS_RATE_LIMIT) -> None:
        self._lock = threading.Lock()
        self._window: deque[float] = deque()
        self.limit = check_limit(limit)
        #: Monotonic arrival time of every counted request, refused ones too (the newest
        #: ``ARRIVALS_KEPT``), in arrival order.
        self.arrivals: deque[float] = deque(maxlen=ARRIVALS_KEPT)
        #: Requests answered 429 by the limit (not injected faults).
        self.refused = 0

    def set_limit(self, limit: int) -> None:
        with self._lock:
            self.limit = check_limit(limit)
            self._window.clear()

    def take(self, now: float | None = None) -> Verdict | None:
        """Count one request; None while the limit is off."""
        with self._lock:
            limit = self.limit
            if not limit:
                return None
            now = time.monotonic() if now is None else now
            window = self._window
            while window and window[0] <= now - WINDOW:
                window.popleft()
            window.append(now)
            self.arrivals.append(now)
            count = len(window)
            admitted = count <= limit
            if not admitted:
                self.refused += 1
            # Admitted when fewer than ``limit`` of these are still in the window.
            free_at = window[-limit] + WINDOW if count >= limit else now
            return Verdict(
                admitted=admitted,
                limit=limit,
                remaining=max(0, limit - count),
                reset=_whole(window[0] + WINDOW - now),
                retry_after=_whole(free_at - now) if count >= limit else 0,
            )

    def clear(self) -> None:
        """Forget the record and the current window (``POST /_sandbox/reset``)."""
        with self._lock:
            self._window.clear()
            self.arrivals.clear()
            self.refused = 0

    def busiest(self, window: float = WINDOW) -> int:
        """The most recorded arrivals within ``window`` seconds (a sliding window)."""
        with self._lock:
            times = list(self.arrivals)
        return busiest(times, window)

    def report(self) -> dict[str, int]:
        with self._lock:
            limit, refused, count = self.limit, self.refused, len(self.arrivals)
        return {
            "limit": limit,
            "requests": count,
            "refused": refused,
            "busiest_second": self.busiest(),
        }


def busiest(times: list[float], window: float = WINDOW) -> int:
    """The most of ``times`` within any half-open interval of ``window`` seconds."""
    ordered = sorted(times)
    most = start = 0
    for end, moment in enumerate(ordered):
        while ordered[start] <= moment - window:
            start += 1
        most = max(most, end - start + 1)
    return most


def check_limit(limit: object) -> int:
    """A limit as given on the command line or the control API: a whole number >= 0."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(
            f"rate limit must be a whole number of requests per second >= 0 (0: off), not {limit!r}"
        )
    return limit


def _whole(seconds: float) -> int:
    # Rounded up: a client that waits the number it is given finds room.
    return max(0, math.ceil(seconds - 1e-9))
