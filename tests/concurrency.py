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

#: How long a thread waits for the others at the gate. Not a pass/fail threshold: when an
#: implementation serialises the workers before the gate (a lock taken earlier), the gate
#: opens after this and the test judges the outcome as usual.
GATE_TIMEOUT = 10.0


def is_claim(sql: str) -> bool:
    """The claiming UPDATE of ``processing.claim`` (it sets ``attempts``)."""
    return sql.lstrip().upper().startswith("UPDATE") and '"attempts"' in sql


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
