"""One time budget per request: everything a request does with Nomos ends by one deadline.

A webhook must answer within Nomos' 30 s wait and a click within a few seconds, also while
Nomos hangs or asks us to slow down. Timeouts alone do not add up to that: a token fetch, its
retries, a ``Retry-After`` sleep, the fetch and its retries each have their own. So the entry
points (the webhook's processing, the portal views) open a budget with ``limit(seconds)``, and
everything below consults it:

- each HTTP attempt's connect and read timeouts are cut to what is left (``timeouts``);
- a retry, and the sleep before it, happen only when the sleep and a whole further attempt
  still fit (``may_wait``); otherwise the caller gets ``NomosUnavailable`` at once;
- a worker waiting for another worker's token renewal stops waiting at the deadline.

A request that runs out gets ``BudgetExhausted`` (a ``NomosUnavailable``): the click shows the
503 page, the webhook marks its event ``failed`` and answers 503 so Nomos redelivers.

The deadline lives in a ``ContextVar``: per thread and per asyncio task, nested budgets take the
earlier deadline, and code outside any budget (management commands) is unlimited.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .exceptions import NomosUnavailable

__all__ = ["BudgetExhausted", "limit", "may_wait", "remaining", "timeouts"]

_deadline: ContextVar[float | None] = ContextVar("nomos_billing_deadline", default=None)
#: The longest one HTTP attempt of the current call may take (its connect + read timeouts);
#: set by the client for each call so that a retry is only started when it can finish.
_attempt: ContextVar[float] = ContextVar("nomos_billing_attempt", default=0.0)

#: Below this, an attempt cannot do anything useful; give up instead of starting it.
MIN_ATTEMPT = 0.05


class BudgetExhausted(NomosUnavailable):
    """The request's time budget for Nomos is used up."""


@contextmanager
def limit(seconds: float | None) -> Iterator[None]:
    """Within the block, calls to Nomos finish or give up ``seconds`` from now (or by an
    enclosing, earlier deadline). ``None`` adds no limit."""
    if seconds is None:
        yield
        return
    deadline = time.monotonic() + float(seconds)
    current = _deadline.get()
    token = _deadline.set(deadline if current is None else min(current, deadline))
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left in the current budget (may be negative), or None outside any budget."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def timeouts(connect: float, read: float, what: str = "a Nomos call") -> tuple[float, float]:
    """``(connect, read)`` cut to the time left; ``BudgetExhausted`` when none is left.

    Also records the attempt's length for ``may_wait``.
    """
    left = remaining()
    if left is not None:
        if left < MIN_ATTEMPT:
            raise BudgetExhausted(f"no time left in this request's budget for {what}")
        connect, read = min(connect, left), min(read, left)
    _attempt.set(connect + read)
    return connect, read


def may_wait(seconds: float) -> bool:
    """True when sleeping ``seconds`` and then one more attempt still fit in the budget."""
    left = remaining()
    return left is None or left - seconds >= max(_attempt.get(), MIN_ATTEMPT)
