"""The client's retry policy: urllib3's ``Retry`` with Nomos' rules, mounted on the client's
session (the rules: ``client.py``'s docstring)."""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import urlsplit

from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from . import api_rate, budget
from .httpdates import retry_after_seconds

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: POSTs sent again after an answer that does not say Nomos did not act (a 5xx), and why a
#: second one is harmless. The OpenAPI document gives no operation an idempotency mechanism
#: (no idempotency key, no de-duplication), so every other POST is retried only where nothing
#: was done: a connection never made, a 429.
REPEATABLE_POSTS = {
    "/oauth/token": "a second token is one more valid token, nothing else",
    "/admin/magic_link": "a second single-use link; the first, never handed out, expires unused",
}
#: The rate limit refuses a request before acting on it.
NOT_ACTED_STATUSES = frozenset({429})


def is_repeatable_post(url: str | None) -> bool:
    """True for the ``REPEATABLE_POSTS`` (``url``: the request's path, or its full URL)."""
    return urlsplit(url or "").path.endswith(tuple(REPEATABLE_POSTS))


class NomosRetry(Retry):
    """urllib3's ``Retry`` with two Nomos rules: POSTs only where safe, and no long sleeps."""

    max_wait: float = 5.0

    def new(self, **kw: Any) -> NomosRetry:
        new = super().new(**kw)
        new.max_wait = self.max_wait
        return new  # type: ignore[return-value]

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if method.upper() == "POST":
            # Which POST it is shows only in ``increment`` (the URL): it refuses the rest.
            return bool(self.total) and status_code in RETRY_STATUSES
        return super().is_retry(method, status_code, has_retry_after)

    def sleep(self, response: Any = None) -> None:
        super().sleep(response)
        # A retry is one more request against Nomos' rate limit: it waits for its turn too.
        api_rate.acquire("a retry")

    def get_retry_after(self, response: Any) -> float | None:
        # Both forms, a date measured against Nomos' own Date; junk is no hint (urllib3 raises).
        return retry_after_seconds(response.headers)

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> NomosRetry:
        if (
            response is not None
            and str(method).upper() == "POST"
            and response.status not in NOT_ACTED_STATUSES
            and not is_repeatable_post(url)
        ):
            # Nomos may have acted (a lead made, then a 5xx): the answer goes back as it is.
            raise MaxRetryError(_pool, url, None)  # type: ignore[arg-type]
        if response is not None:
            api_rate.observe(response.status, response.headers)
            wait = self.get_retry_after(response)
            if wait is not None and wait > self.max_wait:
                # With raise_on_status=False urllib3 hands this response back to us, and the
                # client turns it into NomosUnavailable(retry_after=...) without sleeping.
                raise MaxRetryError(_pool, url, None)  # type: ignore[arg-type]
        new: NomosRetry = super().increment(  # type: ignore[assignment]
            method, url, response, error, _pool, _stacktrace
        )
        planned = new.planned_wait(response)
        if not budget.may_wait(planned):
            # The sleep and another attempt would not end before the request's deadline: give
            # up now. A response goes back to the client (NomosUnavailable with a Retry-After
            # of the wait we skipped); a connection error surfaces as itself.
            if response is not None and response.status == 429:
                # A rate limit without Retry-After: the backoff we skipped is the honest hint.
                response.nomos_retry_in = planned
            raise MaxRetryError(_pool, url, error)  # type: ignore[arg-type]
        return new

    def planned_wait(self, response: Any = None) -> float:
        """The sleep before the next attempt: the server's Retry-After, else our backoff."""
        if response is not None and self.respect_retry_after_header:
            after = self.get_retry_after(response)
            if after is not None:
                return after
        return self.get_backoff_time()

    def get_backoff_time(self) -> float:
        """urllib3's backoff, except after a 429 that named no Retry-After.

        urllib3 retries the first failure at once, which against a rate limit is a tight loop
        (four calls in a second, all refused). After a 429 we wait 1-2 s, then 2-4 s, ...
        ("equal jitter": half fixed, half random, so that workers refused together spread out),
        capped at ``max_wait``.
        """
        last = self.history[-1] if self.history else None
        if last is None or last.status != 429:
            return super().get_backoff_time()
        refused = 0
        for entry in reversed(self.history):
            if entry.status != 429:
                break
            refused += 1
        step = min(float(self.max_wait), 2.0**refused)
        return step / 2 + random.uniform(0, step / 2)


def build_retry(max_retries: int, max_wait: float) -> NomosRetry:
    retry = NomosRetry(
        total=max_retries,
        connect=max_retries,
        read=0,
        status=max_retries,
        other=0,
        redirect=0,
        allowed_methods=frozenset({"GET", "HEAD"}),
        status_forcelist=RETRY_STATUSES,
        backoff_factor=0.2,
        backoff_jitter=0.2,
        backoff_max=max_wait,
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    retry.max_wait = max_wait
    return retry
