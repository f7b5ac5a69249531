"""What Nomos' answers mean to the client: a body decoded, an error answer turned into its
exception, a failed connection told apart (timed out, broke, could not connect)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import requests
from urllib3 import exceptions as urllib3_exceptions
from urllib3.exceptions import MaxRetryError

from .exceptions import NomosAPIError, NomosError, NomosServiceError
from .httpdates import retry_after_seconds
from .jsonsafe import clean, loads_clean

# Named as before the split: a site's LOGGING configures "nomos_billing.client".
logger = logging.getLogger("nomos_billing.client")


def envelope(response: requests.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def business_errors(body: Mapping[str, Any]) -> list[dict[str, str]]:
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


def timed_out(exc: requests.RequestException) -> bool:
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


def broke(exc: requests.RequestException) -> bool:
    """True when a connection was made but dropped (reset, closed without an answer)."""
    return isinstance(_cause(exc), urllib3_exceptions.ProtocolError)


def retry_after(response: requests.Response) -> int | None:
    seconds = retry_after_seconds(response.headers)
    if seconds is not None:
        return math.ceil(seconds)
    # No header: the backoff we gave up on is the honest hint (see NomosRetry.increment).
    skipped = getattr(response.raw, "nomos_retry_in", None)
    return max(1, math.ceil(skipped)) if isinstance(skipped, (int, float)) else None


def error_for(method: str, path: str, response: requests.Response) -> NomosError:
    """The exception an error answer of Nomos becomes (logged once, here)."""
    body = envelope(response)
    status = response.status_code
    code = str(body.get("code", ""))
    message = str(body.get("message", ""))
    request_id = str(body.get("requestId", "") or response.headers.get("X-Request-Id", ""))
    # 401/403 are WARNING here: a 401 on a call is retried with a new token, and refused
    # credentials are reported once per cool-down by misconfiguration.report.
    log = logger.error if status >= 500 else logger.warning
    log("Nomos %s %s -> %s %s (requestId %s)", method, path, status, code, request_id or "-")
    where = {"method": method, "path": path}
    if status == 429 or status >= 500:
        return NomosServiceError(
            status, code, message, request_id, retry_after=retry_after(response), **where
        )
    return NomosAPIError(status, code, message, request_id, errors=business_errors(body), **where)


def decode(response: requests.Response, method: str, path: str) -> Any:
    """The JSON body of a successful answer, cleaned; ``NomosAPIError`` if it is not JSON."""
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
