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

The parts: the retry policy in ``retry.py``, what an answer means in ``responses.py``, the list
endpoints and their walks in ``lists.py``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import requests
from django.core.signals import setting_changed
from django.dispatch import receiver
from requests.adapters import HTTPAdapter

from . import api_rate, breaker, budget, misconfiguration
from .conf import SETTING_NAME, nomos_settings
from .exceptions import (
    NomosAPIError,
    NomosConfigurationError,
    NomosCredentialsRefused,
    NomosServiceError,
    NomosUnavailable,
)
from .lists import ListEndpoints
from .responses import broke, decode, error_for, timed_out
from .retry import build_retry
from .tokens import AccessToken, TokenStore

logger = logging.getLogger("nomos_billing.client")

USER_AGENT = "nomos-billing (Django)"
# Answers to a form-encoded token request that mean "send it the other way" (JSON).
TOKEN_FORM_REFUSED = frozenset({400, 415})
# API base URLs that refused the form-encoded token request and took JSON: per process.
_TOKEN_AS_JSON: set[str] = set()


class NomosClient(ListEndpoints):
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
            if timed_out(exc):
                why, message = "timed out", f"Nomos did not answer {what} in time"
            elif broke(exc):
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
            raise error_for(method, path, response)
        return response

    def request(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None
    ) -> Any:
        """An authenticated call; returns the decoded JSON body."""
        return decode(self._authorized(method, path, json=json, params=params), method, path)

    def _authorized(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None
    ) -> requests.Response:
        token = self.tokens.get()

        def send() -> requests.Response:
            headers = {"Authorization": f"Bearer {token.value}"}
            return self._send(method, path, json=json, params=params, headers=headers)

        try:
            return send()
        except NomosAPIError as exc:
            if exc.status != 401:
                raise
            # The token was revoked or expired early: drop it everywhere, retry once.
            self.tokens.invalidate(token)
            token = self.tokens.get()
            return send()

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
