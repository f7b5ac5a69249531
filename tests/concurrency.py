"""Making threads meet at one SQL statement, so a race is run, not hoped for.

A check-then-update race needs two workers to both read before either writes. Threads started
together rarely interleave that way on two busy cores; holding each thread's first matching
statement until every thread has reached its own makes the worst interleaving the one that runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connection

#: How long a thread waits for the others at the gate. Not a pass/fail threshold on speed:
#: when the workers never all reach the statement (the code changed, or it serialises them
#: earlier), the gate opens after this and the barrier is ``broken``, which the tests assert
#: against, so a gate that no longer gates is noticed.
GATE_TIMEOUT = 10.0


def is_claim(sql: str) -> bool:
    """A statement that claims a webhook event: the conditional UPDATE of
    ``WebhookEvent.objects.claim``, or the INSERT with which ``record_delivery`` stores and
    claims a first delivery (both write ``attempts``)."""
    words = sql.lstrip().upper()
    return words.startswith(("UPDATE", "INSERT")) and '"attempts"' in sql and (
        "webhookevent" in sql.lower())


@contextmanager
def meet_at(barrier: threading.Barrier, matches: Callable[[str], bool]) -> Iterator[None]:
    """In this thread, hold the first statement that ``matches`` until all parties reach theirs."""
    waited = False

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        nonlocal waited
        if not waited and matches(sql):
            waited = True
            try:
                barrier.wait(GATE_TIMEOUT)
            except threading.BrokenBarrierError:
                pass
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield
