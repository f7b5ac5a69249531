"""Ids, timestamps and the JSON shapes the Nomos API answers with.

Stored subscriptions keep ``customer`` as an id (so a later customer change shows up on every
read); ``full_subscription`` embeds the customer object as ``GET /subscriptions/{id}`` does,
``list_subscription`` flattens nested objects to ids as ``GET /subscriptions`` does.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any

API_VERSION = "2026-05-27.curie"
_ALPHABET = string.ascii_lowercase + string.digits

ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    402: "PAYMENT_REQUIRED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    422: "UNPROCESSABLE_ENTITY",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_SERVER_ERROR",
}
SUBSCRIPTION_STATUSES = ("pending", "active", "ended")
SUBSCRIPTION_TYPES = ("consumption", "feed_in")
CUSTOMER_TYPES = ("person", "company")


def new_id(prefix: str) -> str:
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def iso(moment: datetime) -> str:
    """Nomos' timestamp form: UTC, milliseconds, ``Z``."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def now_iso() -> str:
    return iso(datetime.now(timezone.utc))


def error_code(status: int) -> str:
    if status in ERROR_CODES:
        return ERROR_CODES[status]
    # Statuses the document does not list (502/503/504): derive a code in the same style.
    try:
        return HTTPStatus(status).phrase.upper().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "INTERNAL_SERVER_ERROR" if status >= 500 else "BAD_REQUEST"


def error_envelope(
    status: int, message: str, request_id: str, errors: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    code = error_code(status)
    return {
        "code": code,
        "message": message,
        "requestId": request_id,
        "docs": f"https://docs.nomos.energy/api-references/errors/{code}",
        "errors": errors or [],
    }


def customer(
    *,
    id: str,
    email: str,
    first_name: str,
    last_name: str,
    type: str = "person",
    company_name: str | None = None,
    created_at: str | None = None,
) -> dict[str, Any]:
    if type not in CUSTOMER_TYPES:
        raise ValueError(f"customer type must be one of {CUSTOMER_TYPES}")
    data: dict[str, Any] = {
        "object": "customer",
        "id": id,
        "type": type,
        "first_name": first_name,
        "last_name": last_name,
        "email": email,
        "vat_id": None,
        "created_at": created_at or now_iso(),
    }
    if type == "company":
        data["company_name"] = company_name or f"{last_name} GmbH"
    return data


def subscription(
    *,
    id: str,
    customer_id: str,
    plan: str,
    status: str,
    type: str,
    metadata: dict[str, Any] | None,
    estimated_usage: float = 2500,
    zip_code: str = "10115",
    created_at: str | None = None,
) -> dict[str, Any]:
    if status not in SUBSCRIPTION_STATUSES:
        raise ValueError(f"subscription status must be one of {SUBSCRIPTION_STATUSES}")
    if type not in SUBSCRIPTION_TYPES:
        raise ValueError(f"subscription type must be one of {SUBSCRIPTION_TYPES}")
    created = created_at or now_iso()
    # Nested ids derive from the subscription id so seeded data stays deterministic.
    suffix = id.split("_", 1)[-1]
    address = {
        "object": "address",
        "id": f"adr_{suffix}",
        "street": "Sandboxstraße",
        "house_number": "1",
        "zip": zip_code,
        "city": "Berlin",
        "created_at": created,
    }
    data: dict[str, Any] = {
        "object": "subscription",
        "id": id,
        "plan": plan,
        "customer": customer_id,
        "address": address,
        "meter": {
            "object": "meter",
            "id": f"mtr_{suffix}",
            "melo": None,
            "number": "1SBX" + hashlib.sha256(id.encode()).hexdigest()[:10].upper(),
            "type": "smart",
            "malo": None,
            "created_at": created,
        },
        "payment_method": {
            "object": "payment_method",
            "id": f"pm_{suffix}",
            "type": "sepa_debit",
            "sepa_debit": {"iban": "DE89370400440532013000", "account_holder": "Sandbox"},
            "created_at": created,
        },
        "supplier": None,
        "number": hashlib.sha256(id.encode()).hexdigest()[:8].upper(),
        "status": status,
        "estimated_usage": estimated_usage,
        "created_at": created,
        "updated_at": created,
        "start_at": None,
        "terminated_at": None,
        "end_at": None,
        "metadata": metadata,
        "type": type,
        "billing_address": dict(address),
    }
    apply_status(data, status, created)
    return data


def apply_status(sub: dict[str, Any], status: str, when: str | None = None) -> None:
    if status not in SUBSCRIPTION_STATUSES:
        raise ValueError(f"subscription status must be one of {SUBSCRIPTION_STATUSES}")
    when = when or now_iso()
    sub["status"] = status
    sub["updated_at"] = when
    if status in ("active", "ended") and sub["start_at"] is None:
        sub["start_at"] = when
    if status == "ended" and sub["end_at"] is None:
        sub["end_at"] = when


def full_subscription(sub: dict[str, Any], customers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    data = dict(sub)
    data["customer"] = dict(customers[sub["customer"]])
    return data


def list_subscription(sub: dict[str, Any]) -> dict[str, Any]:
    data = dict(sub)
    for key in ("address", "meter", "payment_method", "billing_address"):
        data[key] = sub[key]["id"]
    data["supplier"] = sub["supplier"]["id"] if sub["supplier"] else None
    return data


def lead(
    *,
    id: str,
    link: str,
    metadata: dict[str, Any] | None,
    created_by: str | None,
    created_at: str | None = None,
) -> dict[str, Any]:
    return {
        "object": "lead",
        "id": id,
        "subscription": None,
        "subscribed_at": None,
        "link": link,
        "created_at": created_at or now_iso(),
        "created_by": created_by,
        "last_visited_at": None,
        "metadata": metadata,
    }
