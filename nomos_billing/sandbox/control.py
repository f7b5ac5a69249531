"""``/_sandbox/*``: drive a running sandbox from another process (demo scripts, browser tests).

Loopback tooling, so no auth; these calls are neither counted nor logged.
"""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING, Any

from .faults import Fault
from .http import ApiError, Request, Response, json_response
from .routing import Route
from .seeding import seed_subscriptions, seeded

if TYPE_CHECKING:
    from .state import Sandbox


def _body(request: Request) -> dict[str, Any]:
    return request.data() if request.body else {}


def _kwargs(payload: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    unknown = set(payload) - set(allowed)
    if unknown:
        raise ApiError(400, f"Unknown fields {sorted(unknown)}; allowed: {list(allowed)}")
    return payload


def calls(sb: Sandbox, request: Request) -> Response:
    with sb.lock:
        return json_response(200, dict(sb.calls))


def faults(sb: Sandbox, request: Request) -> Response:
    with sb.lock:
        return json_response(200, sb.faults.pending())


def add_fault(sb: Sandbox, request: Request) -> Response:
    payload = dict(_body(request))
    key = payload.pop("key", None)
    times = payload.pop("times", 1)
    if not isinstance(key, str) or not key:
        raise ApiError(400, 'Give "key", e.g. "POST /admin/magic_link" or "*"')
    try:
        fault = Fault(**_kwargs(payload, tuple(Fault.__dataclass_fields__)))
        sb.add_fault(key, fault, times)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, str(exc)) from None
    return json_response(200, sb.faults.pending())


def clear_faults(sb: Sandbox, request: Request) -> Response:
    sb.clear_faults()
    return json_response(200, {})


def reset(sb: Sandbox, request: Request) -> Response:
    sb.reset_counts()
    sb.clear_faults()
    return json_response(200, {"reset": True})


def state(sb: Sandbox, request: Request) -> Response:
    return json_response(200, sb.snapshot())


def send_webhook(sb: Sandbox, request: Request) -> Response:
    payload = _kwargs(
        _body(request), ("url", "topic", "secret", "context", "event_id", "timestamp", "duplicate")
    )
    if not payload.get("url") or not payload.get("topic"):
        raise ApiError(400, 'Give "url" and "topic"')
    try:
        event = sb.send_webhook(payload.pop("url"), payload.pop("topic"), **payload)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, str(exc)) from None
    times = int(payload.get("duplicate") or 1)
    with sb.lock:
        # The newest ones (a ring: counting from the end stays right when it is full).
        newest = islice(reversed(sb.webhook_deliveries), times)
        deliveries = [d for d in newest if d["event_id"] == event["id"]][::-1]
    statuses = [{"status": d["status"], "error": d["error"]} for d in deliveries]
    return json_response(200, {"event": event, "deliveries": statuses})


def convert_lead(sb: Sandbox, request: Request, id: str) -> Response:
    payload = _kwargs(_body(request), ("status", "type"))
    if id not in sb.leads:
        raise ApiError(404, f"Lead {id} not found")
    try:
        subscription = sb.convert_lead(id, **payload)
    except ValueError as exc:
        raise ApiError(409, str(exc)) from None
    # As a finished checkout does: the event fires (and is forwarded when asked).
    sb.announce("subscription.created", {"subscription": subscription["id"]})
    return json_response(200, subscription)


def add_customer(sb: Sandbox, request: Request) -> Response:
    payload = _kwargs(
        _body(request), ("email", "first_name", "last_name", "type", "id", "company_name")
    )
    try:
        return json_response(200, sb.add_customer(**payload))
    except (TypeError, ValueError) as exc:
        raise ApiError(400, str(exc)) from None


def seed(sb: Sandbox, request: Request) -> Response:
    total = _kwargs(_body(request), ("subscriptions",)).get("subscriptions")
    if not isinstance(total, int) or isinstance(total, bool):
        raise ApiError(400, 'Give "subscriptions": a whole number')
    try:
        added = seed_subscriptions(sb, total)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return json_response(200, {"added": added, "seeded": seeded(sb)})


def add_subscription(sb: Sandbox, request: Request) -> Response:
    payload = _kwargs(
        _body(request),
        ("customer_id", "status", "plan", "type", "metadata", "id", "estimated_usage"),
    )
    try:
        sub = sb.add_subscription(**payload)
    except KeyError as exc:
        raise ApiError(404, str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise ApiError(400, str(exc)) from None
    return json_response(200, sb.subscription_view(sub["id"]))


#: The event a status change fires unless the request names another ``topic``.
STATUS_TOPICS = {"active": "subscription.activated", "ended": "subscription.ended"}


def set_status(sb: Sandbox, request: Request, id: str) -> Response:
    payload = _kwargs(_body(request), ("status", "topic"))
    status, topic = payload.get("status"), payload.get("topic")
    if id not in sb.subscriptions:
        raise ApiError(404, f"Subscription {id} not found")
    try:
        sb.set_subscription_status(id, str(status))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    topic = topic or STATUS_TOPICS.get(str(status))
    if topic:
        sb.announce(str(topic), {"subscription": id})
    return json_response(200, sb.subscription_view(id))


def fire_event(sb: Sandbox, request: Request) -> Response:
    payload = _kwargs(_body(request), ("topic", "context", "subscription"))
    topic, context = payload.get("topic"), payload.get("context")
    subscription = payload.get("subscription")
    if context is None and isinstance(subscription, str) and isinstance(topic, str):
        context = sb.event_context(topic, subscription)
    if not isinstance(topic, str) or not topic or not isinstance(context or {}, dict):
        raise ApiError(400, 'Give "topic" and "context" (an object of ids) or "subscription"')
    return json_response(200, sb.announce(topic, context or {}))


def deliveries(sb: Sandbox, request: Request) -> Response:
    with sb.lock:
        records = [
            {
                k: d.get(k)
                for k in (
                    "event_id",
                    "topic",
                    "url",
                    "status",
                    "error",
                    "attempt",
                    "duplicate",
                    "forwarded",
                    "sent_at",
                )
            }
            for d in sb.webhook_deliveries
        ]
    pending = sb.forwarder.pending() if sb.forwarder is not None else 0
    return json_response(200, {"deliveries": records, "pending": pending})


def unreadable(sb: Sandbox, request: Request) -> Response:
    """``{"seconds": N}``: subscriptions created from now on answer 404 for N seconds."""
    seconds = _body(request).get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise ApiError(400, 'Give "seconds", a number >= 0')
    with sb.lock:
        sb.unreadable_for = float(seconds)
    return json_response(200, {"unreadable_for": sb.unreadable_for})


def make_readable(sb: Sandbox, request: Request, id: str) -> Response:
    if id not in sb.subscriptions:
        raise ApiError(404, f"Subscription {id} not found")
    sb.make_readable(id)
    return json_response(200, sb.subscription_view(id))


def _clock(sb: Sandbox) -> Response:
    return json_response(200, {"clock_skew": sb.clock_skew, "now": sb.now_iso()})


def clock(sb: Sandbox, request: Request) -> Response:
    return _clock(sb)


def set_clock(sb: Sandbox, request: Request) -> Response:
    """``{"skew": SECONDS}``: Nomos' clock runs that far ahead of ours (negative: behind)."""
    skew = _kwargs(_body(request), ("skew",)).get("skew")
    if isinstance(skew, bool) or not isinstance(skew, (int, float)) or skew != skew:
        raise ApiError(400, 'Give "skew", a number of seconds (negative: Nomos is behind)')
    with sb.lock:
        sb.clock_skew = float(skew)
    return _clock(sb)


def rate_limit(sb: Sandbox, request: Request) -> Response:
    return json_response(200, sb.rate_limiter.report())


def set_rate_limit(sb: Sandbox, request: Request) -> Response:
    """``{"limit": N}``: N requests per second from now on (0: off), counted afresh."""
    limit = _kwargs(_body(request), ("limit",)).get("limit")
    try:
        sb.rate_limiter.set_limit(limit)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ApiError(400, f'Give "limit": {exc}') from None
    return json_response(200, sb.rate_limiter.report())


def issue_token(sb: Sandbox, request: Request) -> Response:
    return json_response(200, {"access_token": sb.issue_token()})


def expire_tokens(sb: Sandbox, request: Request) -> Response:
    sb.expire_tokens()
    return json_response(200, {"expired": True})


def _control(method: str, template: str, handler: Any) -> Route:
    return Route(method, "/_sandbox" + template, handler, kind="control", scope=None)


ROUTES = [
    _control("GET", "/calls", calls),
    _control("GET", "/faults", faults),
    _control("POST", "/faults", add_fault),
    _control("DELETE", "/faults", clear_faults),
    _control("POST", "/reset", reset),
    _control("GET", "/state", state),
    _control("POST", "/webhooks", send_webhook),
    _control("POST", "/leads/{id}/convert", convert_lead),
    _control("POST", "/seed", seed),
    _control("POST", "/customers", add_customer),
    _control("POST", "/subscriptions", add_subscription),
    _control("POST", "/subscriptions/unreadable", unreadable),
    _control("POST", "/subscriptions/{id}/status", set_status),
    _control("POST", "/events", fire_event),
    _control("GET", "/deliveries", deliveries),
    _control("POST", "/subscriptions/{id}/readable", make_readable),
    _control("GET", "/clock", clock),
    _control("POST", "/clock", set_clock),
    _control("GET", "/rate-limit", rate_limit),
    _control("POST", "/rate-limit", set_rate_limit),
    _control("POST", "/tokens", issue_token),
    _control("POST", "/tokens/expire", expire_tokens),
]
