"""Injected failures: what a test asks the fake Nomos to do wrong, and for how many calls."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass


@dataclass
class Fault:
    """One misbehaviour. Delays happen first, then the connection is dropped, an error status is
    answered, or (with neither) the request is served normally. With ``act_first`` the request
    is served before all that (its answer thrown away): Nomos failed after acting."""

    status: int | None = None
    #: Seconds, or an HTTP-date (``Retry-After`` takes both forms).
    retry_after: int | str | None = None
    latency: float = 0.0
    hang: float | None = None
    drop_connection: bool = False
    # Serve a list as if every filter were unknown (Nomos' answer to a filter it ignores): the
    # unfiltered list. For testing that list walks check what comes back.
    ignore_filters: bool = False
    # Answer a list page with ``has_more: true`` and ``next_page: null``: a walk that cannot
    # go on, which must not count as complete.
    drop_cursor: bool = False
    act_first: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def delay(self, stop: threading.Event | None = None) -> None:
        seconds = self.latency + (self.hang or 0.0)
        if seconds <= 0:
            return
        # A live server passes its stop event so that shutting down does not wait out a hang.
        if stop is not None:
            stop.wait(seconds)
        else:
            time.sleep(seconds)


class DropConnectionError(Exception):
    """Raised by the WSGI app so the live server closes the socket without answering."""


@dataclass
class _Armed:
    fault: Fault
    remaining: int | None  # None: forever


class FaultTable:
    """Faults per endpoint key ("POST /oauth/token") or "*"; first added, first used.

    Not locked itself: the Sandbox calls it under its own lock.
    """

    def __init__(self) -> None:
        self._by_key: dict[str, deque[_Armed]] = {}

    def add(self, key: str, fault: Fault, times: int | None = 1) -> None:
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        self._by_key.setdefault(key, deque()).append(_Armed(fault, times))

    def clear(self) -> None:
        self._by_key.clear()

    def take(self, key: str, *, wildcard: bool = True) -> Fault | None:
        """The fault for this call, using up one of its times."""
        for candidate in (key, "*") if wildcard else (key,):
            queue = self._by_key.get(candidate)
            if not queue:
                continue
            armed = queue[0]
            if armed.remaining is not None:
                armed.remaining -= 1
                if armed.remaining <= 0:
                    queue.popleft()
            return armed.fault
        return None

    def pending(self) -> dict[str, list[dict[str, object]]]:
        return {
            key: [{**a.fault.as_dict(), "times": a.remaining} for a in queue]
            for key, queue in self._by_key.items()
            if queue
        }
