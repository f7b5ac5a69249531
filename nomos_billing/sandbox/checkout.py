"""The hosted checkout: ``https://{plan.slug}.checkout.energy/``, served on the plan's own host
``http://<plan-slug>.checkout.localhost:<port>/`` (``hosts.checkout_origin``).

What the provider documents (API-NOTES, "Hosted checkout and leads"): pre-filled from a lead
(``?id=lead_...``) or from ``zip``, ``usage`` and ``metadata.<key>=<value>`` query parameters;
every ``metadata.<key>`` of the URL is persisted on the new subscription's metadata (and nothing
else is); after sign-up the browser goes to the plan's return URL (or a hosted confirmation
page) and ``subscription.created`` fires at once, with ``context.lead`` when it came from a
lead. A link minted by ``POST /admin/magic_link`` for a customer without a subscription lands
here too (``?token_hash=...``) and signs that customer up.
"""

from __future__ import annotations

import re
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from .http import Request, Response, html_response
from .pages import page
from .routing import Route

if TYPE_CHECKING:
    from .state import Sandbox

TITLE = "Nomos sandbox checkout"
METADATA_PREFIX = "metadata."
_ZIP = re.compile(r"^[0-9]{5}$")
#: What Nomos allows for metadata; a bigger URL is refused rather than stored cut.
MAX_METADATA_BYTES = 10 * 1024


def _metadata(values: dict[str, str]) -> dict[str, str]:
    return {
        k[len(METADATA_PREFIX) :]: v
        for k, v in values.items()
        if k.startswith(METADATA_PREFIX) and len(k) > len(METADATA_PREFIX)
    }


def _prefill(sb: Sandbox, values: dict[str, str]) -> tuple[dict[str, str], str | None]:
    """The form's values (query first, then the lead's or the customer's data), or an error
    page's message when the link cannot be used."""
    form = dict(values)
    lead_id, token_hash = values.get("id"), values.get("token_hash")
    with sb.lock:
        if lead_id:
            lead = sb.leads.get(lead_id)
            if lead is None:
                return form, "Unknown checkout link"
            if lead["subscription"]:
                return form, "This sign-up is complete; the link cannot be used again"
            lead["last_visited_at"] = sb.now_iso()
            request = sb._lead_requests.get(lead_id, {})
            person = request.get("customer") or {}
            known = {
                "zip": (request.get("address") or {}).get("zip"),
                "usage": (request.get("meter") or {}).get("estimated_usage"),
                "email": person.get("email"),
                "first_name": person.get("first_name"),
                "last_name": person.get("last_name"),
            }
        elif token_hash:
            customer = sb.checkout_customer(token_hash)
            if customer is None:
                return form, "This link has already been used or is invalid"
            known = {k: customer.get(k) for k in ("email", "first_name", "last_name")}
        else:
            known = {}
    for key, value in known.items():
        if value is not None and not form.get(key):
            form[key] = str(
                int(value) if isinstance(value, float) and value.is_integer() else value
            )
    return form, None


def _field(
    name: str, label: str, values: dict[str, str], errors: dict[str, str], **attrs: str
) -> str:
    extra = "".join(f' {k}="{escape(v)}"' for k, v in attrs.items())
    error = (
        f'<span class="error" id="error-{name}">{escape(errors[name])}</span>'
        if name in errors
        else ""
    )
    return (
        f'<p><label for="{name}">{escape(label)}</label> '
        f'<input id="{name}" name="{name}" value="{escape(values.get(name, ""))}"{extra}>'
        f"{error}</p>"
    )


def _form_page(plan: str, values: dict[str, str], errors: dict[str, str], status: int) -> Response:
    hidden = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
        for k, v in values.items()
        if k in ("id", "token_hash") or k.startswith(METADATA_PREFIX)
    )
    general = (
        f'<p class="error" id="error-form">{escape(errors["form"])}</p>' if "form" in errors else ""
    )
    action = "/"
    body = (
        f"<h1>{escape(TITLE)}</h1>\n"
        f'<p>Plan: <span id="plan">{escape(plan)}</span></p>\n{general}\n'
        f'<form id="checkout-form" method="post" action="{escape(action)}">'
        f"{hidden}"
        + _field("first_name", "First name", values, errors, autocomplete="given-name")
        + _field("last_name", "Last name", values, errors, autocomplete="family-name")
        + _field("email", "E-mail", values, errors, type="email", autocomplete="email")
        + _field("zip", "Postcode", values, errors, inputmode="numeric")
        + _field("usage", "Estimated usage (kWh/year)", values, errors, inputmode="numeric")
        + '<p><button id="checkout-submit" type="submit">Sign up</button></p></form>'
    )
    return html_response(status, page(TITLE, body))


def _error_page(status: int, message: str) -> Response:
    return html_response(status, page(TITLE, f'<h1 id="checkout-error">{escape(message)}</h1>'))


def show(sb: Sandbox, request: Request, plan: str) -> Response:
    values = {k: v[-1] for k, v in request.params.items()}
    form, problem = _prefill(sb, values)
    if problem:
        return _error_page(404 if "Unknown" in problem else 410, problem)
    return _form_page(plan, form, {}, 200)


def _validate(sb: Sandbox, values: dict[str, str]) -> tuple[dict[str, str], float]:
    errors: dict[str, str] = {}
    zip_code = values.get("zip", "").strip()
    if not _ZIP.match(zip_code):
        errors["zip"] = "Enter a postcode of 5 digits."
    elif zip_code in sb.unserviceable_zips:
        errors["zip"] = f"We cannot supply electricity to postcode {zip_code}."
    usage = 0.0
    try:
        usage = float(values.get("usage", "").strip())
    except ValueError:
        errors["usage"] = "Enter your yearly usage in kWh."
    else:
        if not 100 <= usage <= 1_000_000:
            errors["usage"] = "Enter a usage between 100 and 1,000,000 kWh."
    if not values.get("token_hash"):
        email = values.get("email", "").strip()
        if "@" not in email or len(email) > 254:
            errors["email"] = "Enter your e-mail address."
        for name in ("first_name", "last_name"):
            if not values.get(name, "").strip():
                errors[name] = "Required."
    if len(urlencode(_metadata(values)).encode()) > MAX_METADATA_BYTES:
        errors["form"] = "The link carries more than 10 KB of metadata."
    return errors, usage


def submit(sb: Sandbox, request: Request, plan: str) -> Response:
    values = {k: v for k, v in request.data().items() if isinstance(v, str)}
    form, problem = _prefill(sb, values)
    if problem:
        return _error_page(404 if "Unknown" in problem else 410, problem)
    errors, usage = _validate(sb, form)
    if errors:
        return _form_page(plan, form, errors, 400)
    person = {k: form.get(k, "").strip() for k in ("email", "first_name", "last_name")}
    try:
        sub = sb.complete_checkout(
            plan,
            person=person,
            zip_code=form["zip"].strip(),
            usage=int(usage) if usage.is_integer() else usage,
            metadata=_metadata(form),
            lead_id=form.get("id") or None,
            token_hash=form.get("token_hash") or None,
        )
    except ValueError as exc:
        return _error_page(410, str(exc))
    target = sb.return_urls.get(plan) or sb.return_urls.get("*")
    if not target:
        target = "/done?" + urlencode({"subscription": sub["id"]})
    return Response(303, b"", [("Location", target), ("Cache-Control", "no-store")])


def done(sb: Sandbox, request: Request, plan: str) -> Response:
    sub_id = request.param("subscription") or ""
    with sb.lock:
        known = sub_id in sb.subscriptions
    if not known:
        return _error_page(404, "Unknown sign-up")
    body = (
        f"<h1>{escape(TITLE)}</h1>\n<p>Thank you, your sign-up is complete.</p>\n"
        f'<p>Subscription <span id="subscription-id">{escape(sub_id)}</span></p>'
    )
    return html_response(200, page(TITLE, body))


def _route(method: str, template: str, handler: Any) -> Route:
    # The plan comes from the host (``SandboxApp``), as Nomos' checkout has one per plan.
    return Route(method, template, handler, kind="page", scope=None, site="checkout")


ROUTES = [
    _route("GET", "/done", done),
    _route("GET", "/", show),
    _route("POST", "/", submit),
]
