"""``{% load nomos_billing %}``: the portal button, the portal URL and the checkout URL.

``{% nomos_checkout_url [zip=...] [usage=...] %}`` gives the plan's hosted checkout
(``CHECKOUT_URL``) carrying the signed-in user's signed reference (``linking.checkout_url``),
or an empty string for anonymous visitors or without ``CHECKOUT_URL``.

``{% nomos_portal_button [label=...] [next=...] [css_class=...] [method="get"] %}`` renders
``nomos_billing/portal_button.html``: a small POST form (with the CSRF token) for a linked user,
a link to the lead form / sign-up page for a user without a customer, where a confirmation
mail went and a "send again" button for a user whose link is held, nothing for anonymous
visitors. ``{% nomos_portal_url [next=...] %}`` is the portal view's URL for a signed-in user
and empty for anonymous visitors. The customer lookup is cached on the user object, so
several buttons cost one query. No link is minted while rendering: that happens when the
button is clicked.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from django import template
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext as _

from ..conf import nomos_settings
from ..confirmation import held_context, pending_claim
from ..leads import has_recent_checkout
from ..linking import checkout_url
from ..portal import customer_id_of

register = template.Library()

TEMPLATE = "nomos_billing/portal_button.html"
DEFAULT_CSS_CLASS = "nomos-portal-button"


def _user(context: template.Context) -> Any:
    request = context.get("request")
    user = getattr(request, "user", None) if request is not None else None
    return user if user is not None else context.get("user")


def portal_url(next: str | None = None) -> str:
    url = reverse("nomos_billing:portal")
    if next:
        url += "?next=" + quote(str(next), safe="/")
    return url


@register.simple_tag(takes_context=True)
def nomos_portal_url(context: template.Context, next: str | None = None) -> str:
    """The portal view's URL, with ``?next=`` when given (validated when clicked); empty for
    an anonymous visitor, like the button (``{% if %}`` around the link can test for it)."""
    if not _is_signed_in(_user(context)):
        return ""
    return portal_url(next)


def _is_signed_in(user: Any) -> bool:
    return user is not None and bool(getattr(user, "is_authenticated", False))


@register.simple_tag(takes_context=True)
def nomos_checkout_url(
    context: template.Context, zip: str | None = None, usage: int | str | None = None
) -> str:
    """The hosted checkout for the current user, pre-filled; "" when there is none to give."""
    user = _user(context)
    if not _is_signed_in(user) or not nomos_settings.CHECKOUT_URL:
        return ""
    return checkout_url(user, zip=zip or None, usage=usage or None)


@register.simple_tag(takes_context=True)
def nomos_portal_button(
    context: template.Context,
    label: str | None = None,
    next: str | None = None,
    css_class: str = DEFAULT_CSS_CLASS,
    method: str = "post",
    start_label: str | None = None,
) -> SafeString:
    user = _user(context)
    if not _is_signed_in(user):
        return mark_safe("")
    method = "get" if str(method).lower() == "get" else "post"
    values: dict[str, Any] = {
        "css_class": css_class,
        "next": next or "",
        "csrf_token": context.get("csrf_token"),
        "request": context.get("request"),
    }
    claim = None if customer_id_of(user) is not None else pending_claim(user)
    if claim is not None:
        # The contract waits for its mailbox: say where the mail went, offer to send it again.
        values.update(variant="held", held=held_context(claim))
    elif customer_id_of(user) is not None or has_recent_checkout(user):
        values.update(
            variant="portal",
            label=label or _("Open customer portal"),
            method=method,
            url=portal_url(next) if method == "get" else reverse("nomos_billing:portal"),
        )
    elif nomos_settings.PLAN_ID:
        values.update(
            variant="start",
            method="get",
            url=reverse("nomos_billing:start"),
            label=start_label or _("Switch to our electricity"),
        )
    elif nomos_settings.SIGNUP_URL:
        values.update(
            variant="signup",
            method="get",
            url=nomos_settings.SIGNUP_URL,
            label=start_label or _("Sign up for electricity"),
        )
    else:
        # The portal view explains that there is no contract yet (the friendly page).
        values.update(
            variant="not_linked",
            method="get",
            url=portal_url(next),
            label=label or _("Open customer portal"),
        )
    html = render_to_string(TEMPLATE, values)
    return mark_safe(html.strip())  # noqa: S308 - render_to_string output is escaped
