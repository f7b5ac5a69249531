"""Sending a signed-in user to their Nomos customer portal.

``mint_portal_link(user, next=None)`` is the one entry point: views, template tags and a site's
own API views call it. The customer id always comes from our database row for ``user``, never
from the request. A magic link is a bearer credential (whoever opens it is signed in), so it is
never logged; the customer id is.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from django.utils.http import is_same_domain

from .client import get_client
from .conf import DEFAULT_PORTAL_HOST_SUFFIX, is_loopback, nomos_settings
from .deeplinks import clean_next, preview
from .exceptions import NomosAPIError, NomosNotLinked

logger = logging.getLogger("nomos_billing.portal")

INVALID_LINK = "INVALID_LINK"

__all__ = ["INVALID_LINK", "get_customer", "is_allowed_link", "mint_portal_link", "with_next"]


def get_customer(user: Any) -> Any:
    """The user's ``NomosCustomer`` or ``None``; anonymous users have none.

    One query per user object: Django caches the reverse one-to-one on the instance (also when
    there is no row), so the template tags and the view share the lookup within a request.
    """
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    try:
        return user.nomos_customer
    except AttributeError:
        # Includes RelatedObjectDoesNotExist (a subclass of AttributeError) and user objects
        # that are not instances of the user model (e.g. a token-auth stand-in).
        return None


def portal_hosts() -> list[str]:
    hosts = nomos_settings.PORTAL_HOSTS
    if isinstance(hosts, (list, tuple)) and hosts:
        return [h.lower() for h in hosts if isinstance(h, str) and h]
    return [DEFAULT_PORTAL_HOST_SUFFIX]


def is_allowed_link(link: str, *, hosts: list[str] | None = None, any_host: bool = False) -> bool:
    """True if ``link`` is https on a configured portal host (or, against a loopback sandbox
    API only, http(s) on a loopback host). ``any_host`` accepts https anywhere: Nomos'
    checkout links live on brand domains we cannot list."""
    if not isinstance(link, str) or any(c in link for c in "\\\r\n\t ") or not link.isascii():
        return False
    try:
        parts = urlsplit(link)
        port = parts.port
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    if not host or parts.username is not None or parts.password is not None:
        return False
    if nomos_settings.api_is_loopback and is_loopback(host):
        return parts.scheme in ("http", "https")
    if parts.scheme != "https":
        return False
    if any_host:
        return True
    if port not in (None, 443):
        return False
    return any(is_same_domain(host, pattern) for pattern in (hosts or portal_hosts()))


def with_next(link: str, path: str) -> str:
    """``link`` with its ``next`` query parameter replaced by ``path``; the other parameters
    keep their exact bytes (the token hash must reach the portal unchanged)."""
    parts = urlsplit(link)
    kept = [
        pair
        for pair in parts.query.split("&")
        if pair and unquote(pair.partition("=")[0]) != "next"
    ]
    kept.append("next=" + quote(path, safe="/"))
    return urlunsplit(parts._replace(query="&".join(kept)))


def mint_portal_link(user: Any, next: str | None = None) -> str:
    """A fresh single-use portal link for ``user``'s Nomos customer.

    ``next`` (e.g. ``"/invoices/inv_abc"``) picks the portal page when it is a safe path
    (``deeplinks.clean_next``); anything else is dropped and the portal shows its default page.

    Raises ``NomosNotLinked`` (anonymous, or no customer), ``NomosAPIError`` (Nomos refused; code
    ``INVALID_LINK`` when the link Nomos returned is not on an allowed portal host) or
    ``NomosUnavailable``.
    """
    customer = get_customer(user)
    if customer is None:
        raise NomosNotLinked("this user has no Nomos customer")
    deep_link = clean_next(next) if next else None
    if next and deep_link is None:
        logger.info(
            "portal deep link dropped for customer %s: %s", customer.customer_id, preview(next)
        )
    link = get_client().create_magic_link(customer.customer_id)
    if not is_allowed_link(link):
        parts = urlsplit(link) if isinstance(link, str) else None
        where = repr(f"{parts.scheme}://{parts.hostname}") if parts else "?"
        logger.error(
            "Nomos returned a portal link on %s for customer %s, which is not an "
            "allowed portal host (NOMOS_BILLING['PORTAL_HOSTS']); refusing it",
            where,
            customer.customer_id,
        )
        raise NomosAPIError(
            200,
            INVALID_LINK,
            f"portal link on {where} is not allowed",
            method="POST",
            path="/admin/magic_link",
        )
    if deep_link:
        link = with_next(link, deep_link)
    logger.info("portal link minted for customer %s", customer.customer_id)
    return link
