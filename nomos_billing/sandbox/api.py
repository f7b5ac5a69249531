"""Handlers for the Nomos API endpoints the integration uses."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import listing
from .http import ApiError, Request, Response, json_response
from .routing import Route
from .shapes import list_subscription

if TYPE_CHECKING:
    from .state import Sandbox

_FILTER = re.compile(r"^filter\[(\w+)\]\[(\w+)\]$")


def _invalid(field: str, message: str, code: str = "invalid_type") -> ApiError:
    return ApiError(
        400,
        f"Invalid request: {field}: {message}",
        [{"code": code, "field": field, "message": message}],
    )


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
    if request.body.strip() and request.content_type not in sb.token_content_types:
        raise ApiError(415, f"Unsupported content type {request.content_type or '(none)'!r}")
    grant_type = request.data().get("grant_type")
    if not grant_type:
        raise _invalid("grant_type", "Required")
    if grant_type != "client_credentials":
        raise _invalid("grant_type", f"Unsupported grant type {grant_type!r}", "invalid_value")
    ttl = sb.token_ttl
    return json_response(
        200,
        {
            "access_token": sb.issue_token(),
            "token_type": "Bearer",
            "expires_in": int(ttl) if float(ttl).is_integer() else ttl,
            "refresh_token": sb.issue_refresh_token(),
            "scope": sb.scope,
        },
        [("Cache-Control", "no-store")],
    )


# -- portal -----------------------------------------------------------------------------------


def magic_link(sb: Sandbox, request: Request) -> Response:
    payload = request.json()
    customer_id = payload.get("customerId") if isinstance(payload, dict) else None
    if not isinstance(customer_id, str):
        raise _invalid("customerId", "Required")
    if customer_id not in sb.customers:
        raise ApiError(404, f"Customer {customer_id} not found")
    link = sb.mint_magic_link(customer_id, base_url(sb, request))
    return json_response(200, {"object": "magic_link", "link": link})


# -- lists ------------------------------------------------------------------------------------


#: What each list endpoint filters on, per the document's parameter descriptions.
SUBSCRIPTION_FILTERS = {
    "status": "string",
    "customer": "string",
    "plan": "string",
    "created_at": "date",
    "updated_at": "date",
}
CUSTOMER_FILTERS = {"email": "string", "type": "string", "created_at": "date"}
LEAD_FILTERS = {"created_at": "date"}
_OPERATORS = {
    "string": frozenset({"eq", "ne", "in", "is_null", "contains", "starts_with", "ends_with"}),
    "date": frozenset({"gte", "lte"}),
}


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    # The provider asks for a timezone; without one the value is not a usable date.
    return parsed if parsed.tzinfo is not None else None


def _string_test(operator: str, wanted: str) -> Callable[[Any], bool]:
    if operator == "is_null":
        if wanted.lower() not in ("true", "false"):
            return lambda actual: True
        return lambda actual: (actual is None) == (wanted.lower() == "true")
    tests: dict[str, Callable[[str], bool]] = {
        "eq": lambda text: text == wanted,
        "ne": lambda text: text != wanted,
        "in": lambda text: text in wanted.split(","),
        "contains": lambda text: wanted in text,
        "starts_with": lambda text: text.startswith(wanted),
        "ends_with": lambda text: text.endswith(wanted),
    }
    test = tests[operator]
    return lambda actual: operator == "ne" if actual is None else test(str(actual))


def _date_test(operator: str, wanted: str) -> Callable[[Any], bool] | None:
    moment = _moment(wanted)
    if moment is None:
        return None
    if operator == "gte":
        return lambda actual: (m := _moment(actual)) is not None and m >= moment
    return lambda actual: (m := _moment(actual)) is not None and m <= moment


def _filters(request: Request, fields: dict[str, str]) -> list[tuple[str, Callable[[Any], bool]]]:
    """The filters of this request that Nomos would apply; like Nomos, anything else (an
    unknown field, a disallowed operator, a malformed name or date) is silently ignored."""
    found: list[tuple[str, Callable[[Any], bool]]] = []
    if request.environ.get("nomos_sandbox.ignore_filters"):
        return found
    for name, values in request.params.items():
        match = _FILTER.match(name)
        if not match or match.group(1) not in fields:
            continue
        field, operator = match.groups()
        kind = fields[field]
        if operator not in _OPERATORS[kind]:
            continue
        test = (
            _string_test(operator, values[-1])
            if kind == "string"
            else _date_test(operator, values[-1])
        )
        if test is not None:
            found.append((field, test))
    return found


def _keep(
    filters: list[tuple[str, Callable[[Any], bool]]],
) -> Callable[[dict[str, Any]], bool]:
    return lambda item: all(test(item.get(field)) for field, test in filters)


# -- resources --------------------------------------------------------------------------------


def get_subscription(sb: Sandbox, request: Request, id: str) -> Response:
    if not sb.is_readable(id):
        raise ApiError(404, f"Subscription {id} not found")
    return json_response(200, sb.subscription_view(id))


def list_subscriptions(sb: Sandbox, request: Request) -> Response:
    matches = _keep(_filters(request, SUBSCRIPTION_FILTERS))
    with sb.lock:
        body = listing.page(
            request,
            sb.subscriptions,
            sb.orders["subscriptions"],
            lambda s: sb.is_readable(s["id"]) and matches(s),
            list_subscription,
        )
    return json_response(200, body)


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
    if not isinstance(payload.get("created_by", ""), (str, type(None))):
        bad("created_by", "Expected a string")
    metadata = payload.get("metadata", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        bad("metadata", "Expected an object of strings")
    if errors:
        raise ApiError(400, "Invalid lead", errors)
    return payload


def _business_errors(sb: Sandbox, payload: dict[str, Any]) -> None:
    """Well-formed leads Nomos still refuses: a postcode its grid operators do not serve."""
    zip_code = payload["address"]["zip"]
    if zip_code in sb.unserviceable_zips:
        raise ApiError(
            400,
            f"unserviceable_zip in 'address.zip': {zip_code}",
            [
                {
                    "code": "unserviceable_zip",
                    "field": "address.zip",
                    "message": f"We cannot supply electricity to postcode {zip_code}.",
                }
            ],
        )


def create_lead(sb: Sandbox, request: Request) -> Response:
    payload = _validate_lead(request.json())
    _business_errors(sb, payload)
    return json_response(200, sb.create_lead(payload, base_url(sb, request)))


def _read(store: str, noun: str) -> Callable[[Sandbox, Request, str], Response]:
    """``GET /<store>/{id}``: the stored item as it is, or Nomos' 404."""

    def read(sb: Sandbox, request: Request, id: str) -> Response:
        item = getattr(sb, store).get(id)
        if item is None:
            raise ApiError(404, f"{noun} {id} not found")
        return json_response(200, item)

    return read


def _list(store: str, filters: dict[str, str]) -> Callable[[Sandbox, Request], Response]:
    """``GET /<store>``: a page of the items the known filters keep (unknown ones ignored)."""

    def list_page(sb: Sandbox, request: Request) -> Response:
        matches = _keep(_filters(request, filters))
        with sb.lock:
            body = listing.page(request, getattr(sb, store), sb.orders[store], matches)
        return json_response(200, body)

    return list_page


get_customer = _read("customers", "Customer")
get_event = _read("events", "Event")
get_lead = _read("leads", "Lead")
list_customers = _list("customers", CUSTOMER_FILTERS)
list_leads = _list("leads", LEAD_FILTERS)


ROUTES = [
    Route("POST", "/oauth/token", token, scope=None),
    Route("POST", "/admin/magic_link", magic_link, scope="write"),
    Route("GET", "/subscriptions", list_subscriptions),
    Route("GET", "/subscriptions/{id}", get_subscription),
    Route("GET", "/customers", list_customers),
    Route("GET", "/customers/{id}", get_customer),
    Route("GET", "/events/{id}", get_event),
    Route("GET", "/leads", list_leads),
    Route("POST", "/leads", create_lead, scope="write"),
    Route("GET", "/leads/{id}", get_lead),
]
