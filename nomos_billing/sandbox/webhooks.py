"""Deliver events the way Nomos does: raw JSON body, ``X-Nomos-Signature`` over those bytes.

Signed here with the standard library, as Nomos' documentation describes it, not with the
package's ``signatures`` module: the fake stays free of Django, and a mistake in our verifier
is not repeated by the sender it is tested against.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import requests

HEADER = "X-Nomos-Signature"


def sign_payload(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def deliver(
    url: str,
    event: dict[str, Any],
    secret: str,
    *,
    timestamp: int | None = None,
    times: int = 1,
    timeout: float = 30,
) -> list[dict[str, Any]]:
    """POST the event ``times`` times (at-least-once duplicates), re-signing each delivery as a
    retry would; never raises for the receiver's failures, they are in the returned records."""
    body = encode(event)
    records = []
    with requests.Session() as session:
        for _ in range(max(1, times)):
            signature = sign_payload(body, secret, timestamp)
            record: dict[str, Any] = {
                "event_id": event["id"],
                "topic": event["topic"],
                "url": url,
                "body": body,
                "signature": signature,
                "status": None,
                "error": None,
                "response_body": b"",
                "sent_at": time.time(),
            }
            try:
                response = session.post(
                    url,
                    data=body,
                    timeout=timeout,
                    allow_redirects=False,
                    headers={
                        "Content-Type": "application/json",
                        HEADER: signature,
                        "User-Agent": "nomos-sandbox-webhooks",
                    },
                )
            except requests.RequestException as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
            else:
                record["status"] = response.status_code
                record["response_body"] = response.content
            records.append(record)
    return records
