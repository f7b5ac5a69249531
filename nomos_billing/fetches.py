"""One fetch of a subscription for all the events waiting on it, not one per event.

An event carries ids only and is answered by the subscription's current state. A fetch that
goes out after an event was recorded answers it (Nomos sent the event after the change, we
recorded it before the fetch), so the events waiting for one subscription need one fetch:

- **Within one processing.** ``processing.process_event`` claims the subscription's other
  queued events (``received``) before it fetches and processes them with it; ``shared()`` keeps
  what the call fetched, and every event of the batch reads it from there.
- **Across threads of one process.** Inline webhooks that arrive together while Nomos' rate
  limit holds their fetch back (``api_rate``), or the threads of a worker: a fetch that has not
  gone out yet is joined by every event that asks for the same subscription meanwhile. One that
  has gone out is never joined (it may predate the event); the next one is.

Claims are untouched: each event is still claimed by the conditional UPDATE of ``processing``
and finished once; only the GET is shared.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from . import api_rate, budget
from .client import get_client
from .exceptions import NomosError

__all__ = ["shared", "subscription"]

_memo: ContextVar[dict[str, dict[str, Any] | NomosError] | None] = ContextVar(
    "nomos_billing_fetched", default=None
)


@contextmanager
def shared() -> Iterator[None]:
    """Inside the block, a subscription is fetched once and then read from memory (an error
    from Nomos too)."""
    token = _memo.set({})
    try:
        yield
    finally:
        _memo.reset(token)


def subscription(subscription_id: str) -> dict[str, Any]:
    """``GET /subscriptions/{id}``, shared with the events that wait for the same one."""
    memo = _memo.get()
    if memo is not None and subscription_id in memo:
        found = memo[subscription_id]
        if isinstance(found, BaseException):
            raise found
        return copy.deepcopy(found)
    try:
        data = _fetch(subscription_id)
    except NomosError as exc:
        if memo is not None:
            # The batch's answer too: one refusal (a 404, an outage) is not asked again.
            memo[subscription_id] = exc
        raise
    if memo is not None:
        memo[subscription_id] = copy.deepcopy(data)
    return data


class _Fetch:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.data: dict[str, Any] | None = None
        self.error: BaseException | None = None


_lock = threading.Lock()
#: Fetches that have not gone out yet, by subscription id: the ones an event may still join.
_gathering: dict[str, _Fetch] = {}


def _fetch(subscription_id: str) -> dict[str, Any]:
    with _lock:
        fetch = _gathering.get(subscription_id)
        leading = fetch is None
        if fetch is None:
            fetch = _gathering[subscription_id] = _Fetch()
    if not leading:
        return _join(fetch, subscription_id)
    what = f"GET /subscriptions/{subscription_id}"
    try:
        try:
            # The turn under the rate limit first: while we wait for it, others join.
            api_rate.acquire(what)
        finally:
            with _lock:
                _gathering.pop(subscription_id, None)
        with api_rate.prepaid():
            fetch.data = get_client().get_subscription(subscription_id)
    except BaseException as exc:
        fetch.error = exc
        raise
    finally:
        fetch.done.set()
    return fetch.data


def _join(fetch: _Fetch, subscription_id: str) -> dict[str, Any]:
    left = budget.remaining()
    if not fetch.done.wait(None if left is None else max(0.0, left)):
        raise budget.BudgetExhausted(
            f"no time left waiting for the fetch of subscription {subscription_id}"
        )
    if fetch.error is not None:
        raise fetch.error
    assert fetch.data is not None
    return copy.deepcopy(fetch.data)
