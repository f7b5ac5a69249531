"""The Nomos API client.

One ``requests.Session`` per process (connection pooling and keep-alive), shared by all threads.
Retries are urllib3's ``Retry`` mounted on the session's adapter:

- connection failures (nothing reached Nomos) are retried for every method;
- 429 and 5xx are retried for GETs, with exponential backoff, jitter and ``Retry-After`` (in
  seconds or as an HTTP-date);
- a POST that Nomos may have acted on (any 5xx: it may fail after acting) is retried only when
  a repetition leaves nothing behind (``REPEATABLE_POSTS``: tokens, magic links); the document
  gives no POST an idempotency mechanism, so ``POST /leads`` is retried on 429 only (refused
  before anything happened), never where a retry could make a second lead;
- read timeouts and connections broken after sending are never retried: the caller gets
  ``NomosUnavailable`` within one timeout;
- a ``Retry-After`` longer than ``MAX_RETRY_WAIT`` is not slept through inside a web request;
  it becomes ``NomosUnavailable`` at once;
- 401 drops the shared token, fetches a new one and retries once (client code, not urllib3).
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from django.core.signals import setting_changed
from django.dispatch import receiver
from requests.adapters import HTTPAdapter
from urllib3 import exceptions as urllib3_exceptions
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from . import api_rate, breaker, budget, misconfiguration
from .conf import SETTING_NAME, nomos_settings
from .exceptions import (
    NomosAPIError,
    NomosConfigurationError,
    NomosCredentialsRefused,
    NomosError,
    NomosServiceError,
    NomosUnavailable,
)
from .filters import ListFilter, check_page, query_params
from .httpdates import parse_http_date, retry_after_seconds
from .jsonsafe import clean, loads_clean
from .tokens import AccessToken, TokenStore

logger = logging.getLogger("nomos_billing.client")

USER_AGENT = "nomos-billing (Django)"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Answers to a form-encoded token request that mean "send it the other way" (JSON).
TOKEN_FORM_REFUSED = frozenset({400, 415})
# API base URLs that refused the form-encoded token request and took JSON: per process.
_TOKEN_AS_JSON: set[str] = set()
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


def _envelope(response: requests.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _business_errors(body: Mapping[str, Any]) -> list[dict[str, str]]:
    """The envelope's ``errors`` list, kept to entries and keys we can show safely."""
    raw = body.get("errors")
    if not isinstance(raw, list):
        return []
    errors = []
    for entry in raw[:50]:
        if isinstance(entry, Mapping):
            errors.append(
                {
                    key: str(entry[key])[:500]
                    for key in ("code", "field", "message")
                    if isinstance(entry.get(key), (str, int))
                }
            )
    return errors


def _cause(exc: requests.RequestException) -> object:
    """What urllib3 reported underneath requests' exception (unwrapped from MaxRetryError)."""
    reason = exc.args[0] if exc.args else None
    return reason.reason if isinstance(reason, MaxRetryError) else reason


def _timed_out(exc: requests.RequestException) -> bool:
    """True for a timeout, also when urllib3 wrapped it: a read timeout with no retries left
    reaches us as ``ConnectionError(MaxRetryError(reason=ReadTimeoutError))``."""
    if isinstance(exc, requests.Timeout):
        return True
    cause = _cause(exc)
    if isinstance(cause, urllib3_exceptions.NewConnectionError):
        # urllib3 derives it from ConnectTimeoutError, but a refused or unreachable connection
        # is "could not connect", not a timeout (requests draws the same line).
        return False
    return isinstance(cause, (TimeoutError, urllib3_exceptions.TimeoutError))


def _broke(exc: requests.RequestException) -> bool:
    """True when a connection was made but dropped (reset, closed without an answer)."""
    return isinstance(_cause(exc), urllib3_exceptions.ProtocolError)


def _retry_after(response: requests.Response) -> int | None:
    seconds = retry_after_seconds(response.headers)
    if seconds is not None:
        return math.ceil(seconds)
    # No header: the backoff we gave up on is the honest hint (see NomosRetry.increment).
    skipped = getattr(response.raw, "nomos_retry_in", None)
    return max(1, math.ceil(skipped)) if isinstance(skipped, (int, float)) else None


class NomosClient:
    """Talks to one Nomos API (``API_BASE_URL``) with one set of credentials."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        api_version: str | None = None,
        timeout: tuple[float, float] | None = None,
        max_retries: int | None = None,
        max_retry_wait: float | None = None,
    ) -> None:
        self.base_url = (base_url or nomos_settings.API_BASE_URL).rstrip("/")
        self.client_id = client_id if client_id is not None else nomos_settings.CLIENT_ID
        self._client_secret = (
            client_secret if client_secret is not None else nomos_settings.CLIENT_SECRET
        )
        self.api_version = api_version or nomos_settings.API_VERSION
        self.timeout = timeout or nomos_settings.TIMEOUT
        retries = nomos_settings.MAX_RETRIES if max_retries is None else max_retries
        wait = nomos_settings.MAX_RETRY_WAIT if max_retry_wait is None else max_retry_wait
        self.session = requests.Session()
        self.session.headers.update(
            {
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
                "X-API-Version": self.api_version,
            }
        )
        adapter = HTTPAdapter(
            max_retries=build_retry(retries, wait), pool_maxsize=32, pool_block=False
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.tokens = TokenStore(self.fetch_token)

    def __repr__(self) -> str:
        return f"<NomosClient {self.base_url} client_id={self.client_id!r}>"

    def close(self) -> None:
        self.session.close()

    # -- tokens ---------------------------------------------------------------------------

    def fetch_token(self) -> AccessToken:
        """Ask Nomos for a new client-credentials token (bypasses the shared cache)."""
        missing = tuple(
            key
            for key, value in (
                ("CLIENT_ID", self.client_id),
                ("CLIENT_SECRET", self._client_secret),
            )
            if not value
        )
        if missing:
            raise _reported(
                NomosConfigurationError(
                    f"{SETTING_NAME}['CLIENT_ID'] and {SETTING_NAME}['CLIENT_SECRET'] must be set "
                    "to call the Nomos API.",
                    settings=missing,
                )
            )
        try:
            response = self._token_request()
        except NomosAPIError as exc:
            if not exc.is_auth_failure or isinstance(exc, NomosServiceError):
                raise
            # Refused credentials stay refused until someone edits the settings: an operator
            # error (named, logged once per cool-down), not an outage to wait out.
            raise _reported(
                NomosCredentialsRefused(
                    exc.status,
                    exc.code,
                    exc.message,
                    exc.request_id,
                    method="POST",
                    path="/oauth/token",
                )
            ) from None
        data = response.json()
        try:
            return AccessToken(
                value=str(data["access_token"]),
                expires_at=time.time() + float(data.get("expires_in", 3600)),
                scope=str(data.get("scope", "")),
            )
        except (KeyError, TypeError, ValueError):
            raise NomosAPIError(
                response.status_code,
                "INVALID_RESPONSE",
                "token response without access_token",
                response.headers.get("X-Request-Id", ""),
                method="POST",
                path="/oauth/token",
            ) from None

    def _token_request(self) -> requests.Response:
        """``POST /oauth/token``, form-encoded as RFC 6749 and the provider's guides show.

        The OpenAPI document declares a JSON body instead. If Nomos answers the form with 400
        or 415, the request is sent once more as JSON, and when that works JSON is used for
        this API for the rest of the process (one wasted request per process, not per token).
        """
        body = {"grant_type": "client_credentials"}
        auth = (self.client_id, self._client_secret)
        if self.base_url in _TOKEN_AS_JSON:
            return self._send("POST", "/oauth/token", json=body, auth=auth)
        try:
            return self._send("POST", "/oauth/token", data=body, auth=auth)
        except NomosAPIError as exc:
            if exc.status not in TOKEN_FORM_REFUSED or isinstance(exc, NomosServiceError):
                raise
            logger.warning(
                "Nomos refused the form-encoded token request (HTTP %s); trying "
                "JSON as its OpenAPI document declares",
                exc.status,
            )
        response = self._send("POST", "/oauth/token", json=body, auth=auth)
        _TOKEN_AS_JSON.add(self.base_url)
        logger.warning(
            "Nomos at %s takes the token request as JSON only; using JSON from now "
            "on in this process",
            self.base_url,
        )
        return response

    # -- plumbing -------------------------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = self.base_url + path
        what = f"{method} {path}"
        breaker.allow(what)
        # The site's turn under Nomos' rate limit (clicks first), within the time budget.
        api_rate.acquire(what)
        timeout = budget.timeouts(*self.timeout, what=what)
        try:
            response = self.session.request(method, url, timeout=timeout, **kwargs)
        except (requests.Timeout, requests.ConnectionError) as exc:
            if _timed_out(exc):
                why, message = "timed out", f"Nomos did not answer {what} in time"
            elif _broke(exc):
                why = "the connection broke"
                message = f"the connection to Nomos broke during {what}"
            else:
                why, message = "could not connect", f"could not connect to Nomos for {what}"
            logger.warning("Nomos %s: %s", what, why)
            breaker.record_failure(why)
            raise NomosUnavailable(message) from exc
        except requests.RequestException as exc:
            logger.warning("Nomos %s failed: %s", what, type(exc).__name__)
            breaker.record_failure(type(exc).__name__)
            raise NomosUnavailable(f"Nomos request {what} failed") from exc
        api_rate.observe(response.status_code, response.headers)
        if response.status_code >= 500:
            breaker.record_failure(f"HTTP {response.status_code}")
        else:
            breaker.record_success()
        if response.status_code >= 400:
            raise self._error(method, path, response)
        return response

    def _error(self, method: str, path: str, response: requests.Response) -> NomosError:
        body = _envelope(response)
        status = response.status_code
        code = str(body.get("code", ""))
        message = str(body.get("message", ""))
        request_id = str(body.get("requestId", "") or response.headers.get("X-Request-Id", ""))
        # 401/403 are WARNING here: a 401 on a call is retried with a new token, and refused
        # credentials are reported once per cool-down by misconfiguration.report.
        log = logger.error if status >= 500 else logger.warning
        log("Nomos %s %s -> %s %s (requestId %s)", method, path, status, code, request_id or "-")
        if status == 429 or status >= 500:
            return NomosServiceError(
                status,
                code,
                message,
                request_id,
                method=method,
                path=path,
                retry_after=_retry_after(response),
            )
        return NomosAPIError(
            status,
            code,
            message,
            request_id,
            method=method,
            path=path,
            errors=_business_errors(body),
        )

    def request(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None
    ) -> Any:
        """An authenticated call; returns the decoded JSON body."""
        return self._decode(self._authorized(method, path, json=json, params=params), method, path)

    def _authorized(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None
    ) -> requests.Response:
        token = self.tokens.get()
        try:
            response = self._send(
                method,
                path,
                json=json,
                params=params,
                headers={"Authorization": f"Bearer {token.value}"},
            )
        except NomosAPIError as exc:
            if exc.status != 401:
                raise
            # The token was revoked or expired early: drop it everywhere, retry once.
            self.tokens.invalidate(token)
            token = self.tokens.get()
            response = self._send(
                method,
                path,
                json=json,
                params=params,
                headers={"Authorization": f"Bearer {token.value}"},
            )
        return response

    @staticmethod
    def _decode(response: requests.Response, method: str, path: str) -> Any:
        try:
            # Cleaned here, once, so nothing fetched from Nomos can make a row unstorable.
            if response.encoding is None or response.encoding.lower() in ("utf-8", "utf8"):
                return loads_clean(response.content)
            return clean(response.json())
        except (ValueError, RecursionError):
            raise NomosAPIError(
                response.status_code,
                "INVALID_RESPONSE",
                "Nomos answered with a body that is not JSON",
                response.headers.get("X-Request-Id", ""),
                method=method,
                path=path,
            ) from None

    # -- the endpoints the app uses -------------------------------------------------------

    def create_magic_link(self, customer_id: str) -> str:
        """Mint a fresh single-use portal link for ``customer_id``."""
        data = self.request("POST", "/admin/magic_link", json={"customerId": customer_id})
        link = data.get("link") if isinstance(data, dict) else None
        if not isinstance(link, str) or not link:
            raise NomosAPIError(
                200,
                "INVALID_RESPONSE",
                "magic link response without link",
                method="POST",
                path="/admin/magic_link",
            )
        return link

    def get_subscription(self, subscription_id: str) -> dict[str, Any]:
        return self.request("GET", f"/subscriptions/{_segment(subscription_id)}")

    def get_customer(self, customer_id: str) -> dict[str, Any]:
        return self.request("GET", f"/customers/{_segment(customer_id)}")

    def get_event(self, event_id: str) -> dict[str, Any]:
        return self.request("GET", f"/events/{_segment(event_id)}")

    def create_lead(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/leads", json=dict(payload))

    def get_lead(self, lead_id: str) -> dict[str, Any]:
        """``GET /leads/{id}``: ``subscription`` and ``subscribed_at`` once it converted."""
        return self.request("GET", f"/leads/{_segment(lead_id)}")

    def list_page(
        self,
        path: str,
        *,
        cursor: str | None = None,
        limit: int = 100,
        filters: Sequence[ListFilter] = (),
    ) -> dict[str, Any]:
        """One page of a list endpoint, every item checked against ``filters``.

        Raises ``NomosFilterIgnored`` when an item does not match: Nomos answers a filter it
        ignores with the unfiltered list.
        """
        return self._list_page(path, cursor=cursor, limit=limit, filters=filters)[0]

    def _list_page(
        self,
        path: str,
        *,
        cursor: str | None = None,
        limit: int = 100,
        filters: Sequence[ListFilter] = (),
    ) -> tuple[dict[str, Any], Mapping[str, str]]:
        """``list_page`` and the answer's headers."""
        params: dict[str, Any] = {"limit": limit, **query_params(filters)}
        if cursor:
            params["cursor"] = cursor
        response = self._authorized("GET", path, params=params)
        page = self._decode(response, "GET", path)
        if not isinstance(page, dict):
            raise NomosAPIError(
                200, "INVALID_RESPONSE", "list answer is not an object", method="GET", path=path
            )
        items = page.get("items")
        if items is None:
            items = page["items"] = []
        if not isinstance(items, list):
            raise NomosAPIError(
                200, "INVALID_RESPONSE", "list answer without items", method="GET", path=path
            )
        check_page(path, items, filters)
        return page, response.headers

    def iter_list(
        self, path: str, *, limit: int = 100, filters: Sequence[ListFilter] = ()
    ) -> ListWalk:
        """Every item of a list endpoint, one page fetched (and checked) at a time as the
        caller consumes them; the walk says afterwards whether it reached the last page."""
        return ListWalk(self, path, limit=limit, filters=filters)

    @staticmethod
    def subscription_filters(
        *,
        customer: str | None = None,
        updated_since: datetime | str | None = None,
        filters: Sequence[ListFilter] = (),
    ) -> list[ListFilter]:
        found = list(filters)
        if customer:
            found.append(ListFilter("customer", "eq", customer))
        if updated_since is not None:
            found.append(ListFilter("updated_at", "gte", updated_since))
        return found

    def list_subscriptions(
        self,
        *,
        cursor: str | None = None,
        limit: int = 100,
        customer: str | None = None,
        updated_since: datetime | str | None = None,
        filters: Sequence[ListFilter] = (),
    ) -> dict[str, Any]:
        """One page of ``GET /subscriptions`` (checked against its filters)."""
        return self.list_page(
            "/subscriptions",
            cursor=cursor,
            limit=limit,
            filters=self.subscription_filters(
                customer=customer, updated_since=updated_since, filters=filters
            ),
        )

    def iter_subscriptions(
        self,
        *,
        limit: int = 100,
        customer: str | None = None,
        updated_since: datetime | str | None = None,
        filters: Sequence[ListFilter] = (),
    ) -> ListWalk:
        """Every subscription (of ``customer``, changed since ``updated_since``, matching
        ``filters``), one page at a time; ``NomosFilterIgnored`` if Nomos ignored a filter."""
        return self.iter_list(
            "/subscriptions",
            limit=limit,
            filters=self.subscription_filters(
                customer=customer, updated_since=updated_since, filters=filters
            ),
        )

    def iter_customers(self, *, limit: int = 100, filters: Sequence[ListFilter] = ()) -> ListWalk:
        """Every customer matching ``filters``, one page at a time."""
        return self.iter_list("/customers", limit=limit, filters=filters)


class ListWalk(Iterator[dict[str, Any]]):
    """The items of one walk over a list endpoint, fetched a page at a time as they are
    consumed, and what the walk learnt once it ended:

    - ``complete``: the last page came (``has_more: false``); False while walking, after an
      error, or when a page said ``has_more`` without a ``next_page`` to go on with
      (``incomplete`` says so);
    - ``server_time``: Nomos' clock (its ``Date``) when it answered the first page: a bound a
      catch-up may take, where our own clock would be off by the skew between us.
    """

    def __init__(
        self, client: NomosClient, path: str, *, limit: int, filters: Sequence[ListFilter]
    ) -> None:
        self.path = path
        self.complete = False
        self.incomplete = ""
        self.pages = 0
        self.server_time: datetime | None = None
        self._items = self._walk(client, limit, tuple(filters))

    def __next__(self) -> dict[str, Any]:
        return next(self._items)

    def _walk(
        self, client: NomosClient, limit: int, filters: Sequence[ListFilter]
    ) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        # Every cursor of this walk: one Nomos hands out again would loop forever.
        seen: set[str] = set()
        while True:
            page, headers = client._list_page(
                self.path, cursor=cursor, limit=limit, filters=filters
            )
            if not self.pages:
                self.server_time = parse_http_date(headers.get("Date"))
            self.pages += 1
            yield from page["items"]
            cursor = page.get("next_page")
            if not page.get("has_more"):
                self.complete = True
                return
            if not cursor:
                self.incomplete = (
                    f"Nomos answered page {self.pages} of GET {self.path} with has_more "
                    "but no next_page cursor"
                )
                logger.warning("%s; the walk ends there, incomplete", self.incomplete)
                return
            if str(cursor) in seen:
                raise NomosAPIError(
                    200,
                    "INVALID_RESPONSE",
                    "list answer whose next_page repeats an earlier cursor",
                    method="GET",
                    path=self.path,
                )
            seen.add(str(cursor))


def _reported(exc: NomosConfigurationError) -> NomosConfigurationError:
    misconfiguration.report(exc)
    return exc


def _segment(value: str) -> str:
    # Ids come from webhooks and the database; never let one change the path.
    return requests.utils.quote(str(value), safe="")


_client: NomosClient | None = None
_client_lock = threading.Lock()


def get_client() -> NomosClient:
    """The process-wide client, built on first use from ``NOMOS_BILLING``."""
    global _client
    client = _client
    if client is None:
        with _client_lock:
            if _client is None:
                _client = NomosClient()
            client = _client
    return client


def reset_client() -> None:
    """Forget the process-wide client (settings changed, or we are a forked child)."""
    global _client
    breaker.reset()
    with _client_lock:
        old, _client = _client, None
    if old is not None:
        old.close()


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in (SETTING_NAME, "CACHES"):
        reset_client()


if hasattr(os, "register_at_fork"):
    # Pooled sockets must not be shared with a forked worker (gunicorn --preload).
    os.register_at_fork(after_in_child=lambda: globals().__setitem__("_client", None))
