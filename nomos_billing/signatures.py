"""Nomos webhook signatures: ``X-Nomos-Signature: t=<unix seconds>,v1=<hex>``.

``v1 = hex(HMAC-SHA256(secret, f"{t}." + raw body))``. Everything here works on the raw bytes
of the request; re-serialised JSON would not match, by design. No Django settings are read in
this module: callers pass secrets and tolerance, so the sandbox and the test helpers can use it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .exceptions import (
    WebhookSignatureMalformed,
    WebhookSignatureMismatch,
    WebhookSignatureMissing,
    WebhookTimestampOutOfRange,
)

HEADER = "X-Nomos-Signature"
#: Django's ``request.META`` key for the header.
META_KEY = "HTTP_X_NOMOS_SIGNATURE"
MAX_HEADER_LENGTH = 1024
#: Unix seconds have 10 digits until the year 2286. A much longer value is no time we could
#: compare with the clock (a float overflows past 309 digits), so it is refused while parsing.
MAX_TIMESTAMP_DIGITS = 15
_HEX = frozenset("0123456789abcdefABCDEF")


def compute_signature(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The hex ``v1`` value for ``body`` signed at ``timestamp``."""
    key = secret.encode() if isinstance(secret, str) else secret
    message = str(int(timestamp)).encode() + b"." + body
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign_payload(body: bytes, secret: str | bytes, timestamp: int | None = None) -> str:
    """The full header value Nomos would send for ``body``."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={compute_signature(secret, t, body)}"


@dataclass(frozen=True)
class ParsedSignature:
    timestamp: int
    signatures: tuple[str, ...]


def parse_header(header: str | None) -> ParsedSignature:
    """Split the header into its timestamp and ``v1`` values, or raise a ``WebhookError``.

    Any string gets one of those two answers, never another exception: the header comes from
    anyone who can reach the endpoint.

    Unknown schemes (``v0=``, future ``v2=``) are ignored, as Stripe-style receivers do, so that
    Nomos can add a scheme without breaking us.
    """
    if not isinstance(header, str) or not header.strip():
        raise WebhookSignatureMissing(f"missing {HEADER} header")
    if len(header) > MAX_HEADER_LENGTH:
        raise WebhookSignatureMalformed(f"{HEADER} header is too long")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise WebhookSignatureMalformed(f"{HEADER} header is malformed")
        key, value = key.strip(), value.strip()
        if key == "t":
            # isdigit() accepts non-ASCII digits; int() would too, so be strict.
            if timestamp is not None or not value.isascii() or not value.isdigit():
                raise WebhookSignatureMalformed(f"{HEADER} header has an invalid timestamp")
            if len(value) > MAX_TIMESTAMP_DIGITS:
                raise WebhookTimestampOutOfRange(f"{HEADER} timestamp is out of range")
            timestamp = int(value)
        elif key == "v1":
            if len(value) != 64 or not set(value) <= _HEX:
                raise WebhookSignatureMalformed(f"{HEADER} header has an invalid v1 value")
            signatures.append(value.lower())
    if timestamp is None:
        raise WebhookSignatureMalformed(f"{HEADER} header has no timestamp")
    if not signatures:
        raise WebhookSignatureMalformed(f"{HEADER} header has no v1 signature")
    return ParsedSignature(timestamp, tuple(signatures))


def verify_signature(
    body: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> int:
    """Check ``header`` against ``body``; return the index of the secret that matched.

    The timestamp window applies in both directions: a delivery from the future is as suspect
    as a stale one. Every secret is tried against every ``v1`` (rotation: during a change the
    sender may sign with the new secret while we still list the old one, or vice versa).
    """
    parsed = parse_header(header)
    current = time.time() if now is None else now
    if abs(current - parsed.timestamp) > tolerance:
        raise WebhookTimestampOutOfRange(
            f"{HEADER} timestamp is outside the {tolerance} s tolerance"
        )
    matched: int | None = None
    for index, secret in enumerate(secrets):
        expected = compute_signature(secret, parsed.timestamp, body)
        for candidate in parsed.signatures:
            # Keep comparing after a match so timing does not reveal which secret matched.
            if hmac.compare_digest(expected, candidate) and matched is None:
                matched = index
    if matched is None:
        raise WebhookSignatureMismatch(f"{HEADER} does not match any configured secret")
    return matched
