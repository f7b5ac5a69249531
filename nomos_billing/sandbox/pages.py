"""The HTML stand-in for Nomos' hosted customer portal sign-in (the checkout is ``checkout.py``)."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from .http import Request, Response, html_response
from .routing import Route

if TYPE_CHECKING:
    from .state import Sandbox

INVALID_LINK = "This link has already been used or is invalid"


def page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title></head>\n<body>\n{body}\n</body></html>\n"
    )


def portal_confirm(sb: Sandbox, request: Request) -> Response:
    token_hash = request.param("token_hash") or ""
    next_page = request.param("next") or "/overview"
    customer = None
    if token_hash and request.param("type") == "magiclink":
        customer = sb.redeem_magic_link(token_hash, next_page)
    if customer is None:
        return html_response(403, page("Nomos sandbox portal", f"<h1>{INVALID_LINK}</h1>"))
    body = (
        "<h1>Nomos sandbox customer portal</h1>\n"
        f"<p>Signed in as {escape(customer['email'])} "
        f'(<span id="customer-id">{escape(customer["id"])}</span>)</p>\n'
        f'<p>Page: <span id="next-page">{escape(next_page)}</span></p>'
    )
    return html_response(200, page("Nomos sandbox portal", body))


ROUTES = [
    # On the portal's host (``hosts.portal_origin``), as Nomos' portal serves it.
    Route("GET", "/auth/confirm", portal_confirm, kind="page", scope=None, site="portal"),
]
