"""``--forward-to URL``: deliver the events the sandbox fires to webhook endpoints, as Nomos does.

Like ``stripe listen --forward-to``: every event the sandbox fires by itself (a finished checkout,
a status change through the control API, ``POST /_sandbox/events``) is signed and POSTed to each
URL, at least once. A delivery that gets no 2xx is retried on Nomos' schedule compressed (Nomos:
1 min, 2, 4, ... 32 h, 12 retries; here ``retry_base`` seconds, doubling). It can be told to
duplicate every delivery and to reorder events (hold one back until the next one has gone), the
two things Nomos' at-least-once delivery does to a receiver.

One daemon thread per forwarder sends in due order; the checkout's answer never waits for it.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .webhooks import deliver

if TYPE_CHECKING:
    from .stores import SandboxStores

#: Nomos retries 12 times after the first attempt.
RETRIES = 12


@dataclass(order=True)
class _Job:
    due: float
    seq: int
    event: dict[str, Any] = field(compare=False)
    url: str = field(compare=False)
    attempt: int = field(compare=False, default=1)
    copy: bool = field(compare=False, default=False)


class Forwarder:
    """Deliver ``submit``-ted events to ``urls`` signed with ``secret``, in the background."""

    def __init__(
        self,
        sandbox: SandboxStores,
        urls: list[str],
        secret: str,
        *,
        retry_base: float = 0.5,
        retries: int = RETRIES,
        duplicate: bool = False,
        reorder: bool = False,
        hold: float = 2.0,
        # Nomos waits 30 s for the endpoint's 2xx (API-NOTES, "Webhooks"), and so do we: a
        # receiver's in-progress window must show here as it would in production.
        timeout: float = 30.0,
    ) -> None:
        if not urls:
            raise ValueError("Forwarder needs at least one URL")
        if not secret:
            raise ValueError("Forwarder needs a webhook signing secret")
        self.sandbox = sandbox
        self.urls = list(urls)
        self.secret = secret
        self.retry_base = retry_base
        self.retries = retries
        self.duplicate = duplicate
        self.reorder = reorder
        self.hold = hold
        self.timeout = timeout
        self._queue: list[_Job] = []
        self._seq = itertools.count()
        self._held: list[_Job] = []
        self._cond = threading.Condition()
        self._busy = 0
        self._stopped = False
        self._thread = threading.Thread(
            target=self._run, name="nomos-sandbox-forwarder", daemon=True
        )
        self._thread.start()

    def describe(self) -> str:
        extras = [f"retries every {self.retry_base:g} s doubling, {self.retries} times"]
        if self.duplicate:
            extras.append("duplicates every delivery")
        if self.reorder:
            extras.append("reorders events")
        return f"{', '.join(self.urls)} ({'; '.join(extras)})"

    # -- queueing -----------------------------------------------------------------------------

    def submit(self, event: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._cond:
            jobs = [_Job(now, next(self._seq), event, url) for url in self.urls]
            if self.reorder:
                if self._held:
                    # The newer event goes first, the one held back right after it.
                    held, self._held = self._held, []
                    held_ids = {id(job) for job in held}
                    self._queue = [job for job in self._queue if id(job) not in held_ids]
                    heapq.heapify(self._queue)
                    for job in [*jobs, *held]:
                        job.due, job.seq = now, next(self._seq)
                        heapq.heappush(self._queue, job)
                else:
                    # Held until the next event overtakes it, or ``hold`` seconds pass.
                    for job in jobs:
                        job.due = now + self.hold
                        heapq.heappush(self._queue, job)
                    self._held = jobs
            else:
                for job in jobs:
                    heapq.heappush(self._queue, job)
            self._cond.notify_all()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until nothing is queued or being sent (tests, demo); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
        return True

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._busy

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=self.timeout + 1)

    # -- the worker ---------------------------------------------------------------------------

    def _next_job(self) -> _Job | None:
        with self._cond:
            while not self._stopped:
                if self._queue:
                    wait = self._queue[0].due - time.monotonic()
                    if wait <= 0:
                        job = heapq.heappop(self._queue)
                        self._held = [h for h in self._held if h is not job]
                        self._busy += 1
                        return job
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def _run(self) -> None:
        while (job := self._next_job()) is not None:
            try:
                self._send(job)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _send(self, job: _Job) -> None:
        (record,) = deliver(job.url, job.event, self.secret, timeout=self.timeout)
        record.update(attempt=job.attempt, forwarded=True, duplicate=job.copy)
        with self.sandbox.lock:
            self.sandbox.webhook_deliveries.append(record)
        ok = record["status"] is not None and 200 <= record["status"] < 300
        with self._cond:
            if not ok and job.attempt <= self.retries:
                delay = self.retry_base * 2 ** (job.attempt - 1)
                heapq.heappush(
                    self._queue,
                    _Job(
                        time.monotonic() + delay,
                        next(self._seq),
                        job.event,
                        job.url,
                        job.attempt + 1,
                        job.copy,
                    ),
                )
            elif ok and self.duplicate and not job.copy:
                heapq.heappush(
                    self._queue,
                    _Job(time.monotonic(), next(self._seq), job.event, job.url, 1, copy=True),
                )
