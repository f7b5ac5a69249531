"""The HTML stand-ins for Nomos' hosted pages: the customer portal sign-in and the checkout."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from . import shapes
from .http import Request, Response, html_response
from .routing import Route

if TYPE_CHECKING:
    from .state import Sandbox

INVALID_LINK = "This link has already been used or is invalid"


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title></head>\n<body>\n{body}\n</body></html>\n"
    )


def portal_confirm(sb: Sandbox, request: Request) -> Response:
    token_hash = request.param("token_hash") or ""
    next_page = request.param("next") or "/overview"
    customer = None
    if token_hash and request.param("type") == "magiclink":
        customer = sb.redeem_magic_link(token_hash, next_page)
    if customer is None:
        return html_response(403, _page("Nomos sandbox portal", f"<h1>{INVALID_LINK}</h1>"))
    body = (
        "<h1>Nomos sandbox customer portal</h1>\n"
        f"<p>Signed in as {escape(customer['email'])} "
        f"(<span id=\"customer-id\">{escape(customer['id'])}</span>)</p>\n"
        f"<p>Page: <span id=\"next-page\">{escape(next_page)}</span></p>"
    )
    return html_response(200, _page("Nomos sandbox portal", body))


def checkout(sb: Sandbox, request: Request, id: str) -> Response:
    with sb.lock:
        lead = sb.leads.get(id)
        if lead is not None:
            lead["last_visited_at"] = shapes.now_iso()
    if lead is None:
        return html_response(404, _page("Nomos sandbox checkout", "<h1>Unknown checkout link</h1>"))
    body = (
        "<h1>Nomos sandbox checkout</h1>\n"
        f"<p>Lead: <span id=\"lead-id\">{escape(id)}</span></p>\n"
        "<p>This is a placeholder. Finish the checkout with "
        f"<code>POST /_sandbox/leads/{escape(id)}/convert</code>.</p>"
    )
    return html_response(200, _page("Nomos sandbox checkout", body))


ROUTES = [
    Route("GET", "/portal/auth/confirm", portal_confirm, kind="page", scope=None),
    Route("GET", "/checkout/{id}", checkout, kind="page", scope=None),
]
