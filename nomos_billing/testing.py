"""Helpers for a site's own tests: build Nomos events and post them signed, as Nomos would.

::

    from nomos_billing.testing import make_event, post_event

    def test_activation_reaches_my_receiver(client):
        response = post_event(client, make_event("subscription.activated",
                                                 {"subscription": "sub_sandbox_alice"}))
        assert response.status_code == 200

The secret defaults to the first of ``NOMOS_BILLING['WEBHOOK_SECRETS']``, read at call time.
"""

from __future__ import annotations

import json
import secrets
import string
from datetime import datetime, timezone
from typing import Any

from django.urls import reverse

from .conf import SETTING_NAME, nomos_settings
from .signatures import HEADER, sign_payload

__all__ = [
    "HEADER",
    "encode_event",
    "make_event",
    "post_event",
    "sign_payload",
    "signature_headers",
]

_ALPHABET = string.ascii_lowercase + string.digits


def make_event(
    topic: str, context: dict[str, Any] | None = None, *, event_id: str | None = None
) -> dict[str, Any]:
    """A Nomos event envelope with a fresh ``evt_...`` id (unless given) and the current time."""
    return {
        "id": event_id or "evt_" + "".join(secrets.choice(_ALPHABET) for _ in range(24)),
        "timestamp": datetime.now(timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "topic": topic,
        "context": dict(context or {}),
    }


def encode_event(event: dict[str, Any]) -> bytes:
    """The compact JSON bytes Nomos sends (signatures cover exactly these bytes)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _default_secret() -> str:
    configured = nomos_settings.WEBHOOK_SECRETS
    if not configured:
        raise ValueError(f"pass secret= or set {SETTING_NAME}['WEBHOOK_SECRETS']")
    return configured[0]


def signature_headers(
    body: bytes, secret: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    """``{"X-Nomos-Signature": ...}`` for ``Client.post(..., headers=...)``."""
    return {HEADER: sign_payload(body, secret or _default_secret(), timestamp)}


def post_event(
    client: Any,
    payload: dict[str, Any] | bytes,
    secret: str | None = None,
    timestamp: int | None = None,
    url: str | None = None,
    **extra: Any,
) -> Any:
    """POST ``payload`` (an envelope, or raw bytes sent unchanged) signed with ``secret`` to
    the webhook URL using a Django test ``Client``; returns the response."""
    body = payload if isinstance(payload, bytes) else encode_event(payload)
    headers = {**signature_headers(body, secret, timestamp), **extra.pop("headers", {})}
    return client.post(
        url or reverse("nomos_billing:webhook"),
        data=body,
        content_type="application/json",
        headers=headers,
        **extra,
    )
