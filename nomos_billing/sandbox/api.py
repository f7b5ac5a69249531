"""Handlers for the Nomos API endpoints the integration uses."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from typing import TYPE_CHECKING, Any

from .http import ApiError, Request, Response, json_response
from .routing import Route

if TYPE_CHECKING:
    from .state import Sandbox

_FILTER = re.compile(r"^filter\[(\w+)\]\[(\w+)\]$")


def _invalid(field: str, message: str, code: str = "invalid_type") -> ApiError:
    return ApiError(400, f"Invalid request: {field}: {message}",
                    [{"code": code, "field": field, "message": message}])


def base_url(sb: Sandbox, request: Request) -> str:
    return sb.base_url or request.base_url


# -- OAuth ------------------------------------------------------------------------------------

def _basic_credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, value = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, client_secret = decoded.partition(":")
    return (client_id, client_secret) if sep else None


def token(sb: Sandbox, request: Request) -> Response:
    credentials = _basic_credentials(request)
    if credentials is None or not (
        # Bytes, because compare_digest refuses non-ASCII str; "&" so both are always compared.
        secrets.compare_digest(credentials[0].encode(), sb.client_id.encode())
        & secrets.compare_digest(credentials[1].encode(), sb.client_secret.encode())
    ):
        raise ApiError(401, "Invalid client credentials")
    grant_type = request.data().get("grant_type")
    if not grant_type:
        raise _invalid("grant_type", "Required")
    if grant_type != "client_credentials":
        raise _invalid("grant_type", f"Unsupported grant type {grant_type!r}", "invalid_value")
    ttl = sb.token_ttl
    return json_response(200, {
        "access_token": sb.issue_token(),
        "token_type": "Bearer",
        "expires_in": int(ttl) if float(ttl).is_integer() else ttl,
        "refresh_token": sb.issue_refresh_token(),
        "scope": sb.scope,
    }, [("Cache-Control", "no-store")])


# -- portal -----------------------------------------------------------------------------------

def magic_link(sb: Sandbox, request: Request) -> Response:
    payload = request.json()
    customer_id = payload.get("customerId") if isinstance(payload, dict) else None
    if not isinstance(customer_id, str) or not customer_id:
        raise _invalid("customerId", "Required")
    if customer_id not in sb.customers:
        raise ApiError(404, f"Customer {customer_id} not found")
    link = sb.mint_magic_link(customer_id, base_url(sb, request))
    return json_response(200, {"object": "magic_link", "link": link})


# -- lists ------------------------------------------------------------------------------------

def _encode_cursor(item_id: str) -> str:
    return base64.urlsafe_b64encode(f"after:{item_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith("after:"):
        raise _invalid("cursor", "Invalid cursor", "invalid_value")
    return text[len("after:"):]


def _filters(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, values in request.params.items():
        if not name.startswith("filter"):
            continue
        match = _FILTER.match(name)
        if not match or match.group(1) not in allowed or match.group(2) != "eq":
            raise _invalid(name, f"Unsupported filter (supported: {allowed} with eq)",
                           "invalid_key")
        found[match.group(1)] = values[-1]
    return found


def paginate(request: Request, items: list[dict[str, Any]]) -> dict[str, Any]:
    raw_limit = request.param("limit")
    limit = 10
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise _invalid("limit", "Expected an integer") from None
        if not 1 <= limit <= 100:
            raise _invalid("limit", "Must be between 1 and 100",
                           "too_small" if limit < 1 else "too_big")
    start = 0
    cursor = request.param("cursor")
    if cursor:
        after = _decode_cursor(cursor)
        ids = [item["id"] for item in items]
        if after not in ids:
            raise _invalid("cursor", "Invalid cursor", "invalid_value")
        start = ids.index(after) + 1
    page = items[start:start + limit]
    has_more = start + limit < len(items)
    return {
        "object": "list",
        "items": page,
        "has_more": has_more,
        "next_page": _encode_cursor(page[-1]["id"]) if has_more and page else None,
    }


# -- resources --------------------------------------------------------------------------------

def get_subscription(sb: Sandbox, request: Request, id: str) -> Response:
    if id not in sb.subscriptions:
        raise ApiError(404, f"Subscription {id} not found")
    return json_response(200, sb.subscription_view(id))


def list_subscriptions(sb: Sandbox, request: Request) -> Response:
    from .shapes import list_subscription

    wanted = _filters(request, ("customer", "status", "plan"))
    with sb.lock:
        items = [list_subscription(s) for s in sb.subscriptions.values()]
    items = [i for i in items if all(str(i.get(k)) == v for k, v in wanted.items())]
    return json_response(200, paginate(request, items))


def get_customer(sb: Sandbox, request: Request, id: str) -> Response:
    customer = sb.customers.get(id)
    if customer is None:
        raise ApiError(404, f"Customer {id} not found")
    return json_response(200, customer)


def list_customers(sb: Sandbox, request: Request) -> Response:
    wanted = _filters(request, ("email", "type"))
    with sb.lock:
        items = [dict(c) for c in sb.customers.values()]
    items = [i for i in items if all(str(i.get(k)) == v for k, v in wanted.items())]
    return json_response(200, paginate(request, items))


def get_event(sb: Sandbox, request: Request, id: str) -> Response:
    event = sb.events.get(id)
    if event is None:
        raise ApiError(404, f"Event {id} not found")
    return json_response(200, event)


def _validate_lead(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ApiError(400, "Request body must be a JSON object")
    errors: list[dict[str, str]] = []

    def bad(field: str, message: str, code: str = "invalid_type") -> None:
        errors.append({"code": code, "field": field, "message": message})

    if not isinstance(payload.get("plan"), str) or not payload["plan"]:
        bad("plan", "Required")
    address = payload.get("address")
    if not isinstance(address, dict):
        bad("address", "Required")
    elif not isinstance(address.get("zip"), str):
        bad("address.zip", "Required")
    elif len(address["zip"]) < 5:
        bad("address.zip", "Must contain at least 5 characters", "too_small")
    meter = payload.get("meter")
    usage = meter.get("estimated_usage") if isinstance(meter, dict) else None
    if not isinstance(meter, dict):
        bad("meter", "Required")
    elif not isinstance(usage, (int, float)) or isinstance(usage, bool):
        bad("meter.estimated_usage", "Required")
    elif usage < 100:
        bad("meter.estimated_usage", "Must be at least 100", "too_small")
    customer = payload.get("customer")
    if customer is not None and not isinstance(customer, dict):
        bad("customer", "Expected an object")
    metadata = payload.get("metadata")
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        bad("metadata", "Expected an object of strings")
    if errors:
        raise ApiError(400, "Invalid lead", errors)
    return payload


def create_lead(sb: Sandbox, request: Request) -> Response:
    payload = _validate_lead(request.json())
    return json_response(200, sb.create_lead(payload, base_url(sb, request)))


def get_lead(sb: Sandbox, request: Request, id: str) -> Response:
    lead = sb.leads.get(id)
    if lead is None:
        raise ApiError(404, f"Lead {id} not found")
    return json_response(200, lead)


ROUTES = [
    Route("POST", "/oauth/token", token, scope=None),
    Route("POST", "/admin/magic_link", magic_link, scope="write"),
    Route("GET", "/subscriptions", list_subscriptions),
    Route("GET", "/subscriptions/{id}", get_subscription),
    Route("GET", "/customers", list_customers),
    Route("GET", "/customers/{id}", get_customer),
    Route("GET", "/events/{id}", get_event),
    Route("POST", "/leads", create_lead, scope="write"),
    Route("GET", "/leads/{id}", get_lead),
]
