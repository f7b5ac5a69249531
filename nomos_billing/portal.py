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
from .conf import DEFAULT_CHECKOUT_HOST_SUFFIX, DEFAULT_PORTAL_HOST_SUFFIX, nomos_settings
from .deeplinks import clean_next, preview
from .exceptions import NomosAPIError, NomosNotLinked
from .leads import link_recent_checkout
from .linking import customer_relation
from .models import NomosCustomer

logger = logging.getLogger("nomos_billing.portal")

INVALID_LINK = "INVALID_LINK"

__all__ = [
    "INVALID_LINK",
    "checkout_hosts",
    "customer_id_of",
    "get_customer",
    "is_allowed_link",
    "link_kind",
    "mint_portal_link",
    "portal_hosts",
    "with_next",
]


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


#: Where ``customer_id_of`` keeps its answer on the user object, as ``ModelBackend`` keeps
#: ``_perm_cache``: within a request, the button and the click ask once.
_CUSTOMER_ID_ATTR = "_nomos_customer_id"
_NONE = ""


def customer_id_of(user: Any) -> str | None:
    """The user's Nomos customer id, or ``None`` (anonymous, or no customer).

    The row Django already holds for ``user`` (``get_customer`` ran in this request) is used as
    it is; otherwise one query reads the id alone: a click needs nothing else, and loading the
    whole row costs it more than the rest of our checks together. Asked again for the same user
    object, it answers without a query.
    """
    related = customer_relation(user)
    if related is None:
        return None
    if related.is_cached(user):
        customer = get_customer(user)
        return customer.customer_id if customer is not None else None
    known = getattr(user, _CUSTOMER_ID_ATTR, None)
    if known is None:
        ids = NomosCustomer.objects.filter(user_id=user.pk).order_by()  # one row: no ORDER BY
        known = next(iter(ids.values_list("customer_id", flat=True)[:1]), _NONE)
        setattr(user, _CUSTOMER_ID_ATTR, known)
    return known or None


def _fresh_customer_id(user: Any) -> str | None:
    """``customer_id_of`` after a link made meanwhile (by us or by the webhook just now),
    through another object of this user: what ``user`` remembers of "no customer" is
    forgotten first."""
    related = customer_relation(user)
    if related is not None and related.is_cached(user):
        related.delete_cached_value(user)
    if getattr(user, _CUSTOMER_ID_ATTR, None) is not None:
        delattr(user, _CUSTOMER_ID_ATTR)
    return customer_id_of(user)


def _hosts(name: str, default: list[str]) -> list[str]:
    hosts: list[str] | None = getattr(nomos_settings, name)
    return default if hosts is None else hosts


def portal_hosts() -> list[str]:
    """``PORTAL_HOSTS``, or any brand under Nomos' portal domain."""
    return _hosts("PORTAL_HOSTS", [DEFAULT_PORTAL_HOST_SUFFIX])


def checkout_hosts() -> list[str]:
    """``CHECKOUT_HOSTS``, or any plan under Nomos' checkout domain plus the host of the
    site's own ``CHECKOUT_URL`` (so the two settings cannot disagree by default)."""
    default = [DEFAULT_CHECKOUT_HOST_SUFFIX]
    checkout_url = nomos_settings.CHECKOUT_URL
    if isinstance(checkout_url, str) and checkout_url:
        try:
            own = urlsplit(checkout_url).hostname
        except ValueError:
            own = None
        if own:
            default.append(own.lower())
    return _hosts("CHECKOUT_HOSTS", default)


def _https_host(link: Any) -> str | None:
    """The lower-cased host of an acceptable link; None when the link is not one.

    https on port 443 only. Against a loopback sandbox API the scheme alone is relaxed: http
    too, on the sandbox's port; the host must still be on the allow-list (``link_kind``)."""
    if not isinstance(link, str) or any(c in link for c in "\\\r\n\t ") or not link.isascii():
        return None
    try:
        parts = urlsplit(link)
        port = parts.port
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if not host or parts.username is not None or parts.password is not None:
        return None
    if nomos_settings.api_is_loopback:
        return host if parts.scheme in ("http", "https") else None
    if parts.scheme != "https" or port not in (None, 443):
        return None
    return host


def _on(host: str, patterns: list[str]) -> bool:
    return any(is_same_domain(host, pattern) for pattern in patterns)


def link_kind(link: str) -> str | None:
    """``"portal"`` or ``"checkout"`` for a link on a configured portal or checkout host (the
    portal wins where both match), ``None`` for a link that is not allowed.

    A minted link is checked once, here: the click pays for one parse of it.
    """
    host = _https_host(link)
    if host is None:
        return None
    if _on(host, portal_hosts()):
        return "portal"
    return "checkout" if _on(host, checkout_hosts()) else None


def is_allowed_link(link: str) -> bool:
    """True if ``link`` is https (http too against a loopback sandbox API) on a configured
    portal or checkout host."""
    return link_kind(link) is not None


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

    A user who is not linked yet but came back from a checkout this site started for them
    (``link_recent_checkout``) is linked first, so the first click after the sign-up works
    before its webhook has arrived.

    Raises ``NomosNotLinked`` (anonymous, or no customer), ``NomosAPIError`` (Nomos refused; code
    ``INVALID_LINK`` when the link Nomos returned is not on an allowed portal host) or
    ``NomosUnavailable``.
    """
    customer_id = customer_id_of(user)
    if customer_id is None and link_recent_checkout(user):
        customer_id = _fresh_customer_id(user)
    if customer_id is None:
        raise NomosNotLinked("this user has no Nomos customer")
    deep_link = clean_next(next) if next else None
    if next and deep_link is None:
        logger.info("portal deep link dropped for customer %s: %s", customer_id, preview(next))
    link = get_client().create_magic_link(customer_id)
    kind = link_kind(link)
    if kind is None:
        parts = urlsplit(link) if isinstance(link, str) else None
        where = repr(f"{parts.scheme}://{parts.hostname}") if parts else "?"
        logger.error(
            "Nomos returned a portal link on %s for customer %s, which is not an allowed "
            "portal or checkout host (NOMOS_BILLING['PORTAL_HOSTS'] / ['CHECKOUT_HOSTS']); "
            "refusing it",
            where,
            customer_id,
        )
        raise NomosAPIError(
            200,
            INVALID_LINK,
            f"portal link on {where} is not allowed",
            method="POST",
            path="/admin/magic_link",
        )
    if kind == "checkout":
        # No subscription yet: Nomos sends the customer to the checkout, where `next` means
        # nothing (and the checkout's own query must stay as it is).
        logger.info("checkout link minted for customer %s (no subscription yet)", customer_id)
        return link
    if deep_link:
        link = with_next(link, deep_link)
    logger.info("portal link minted for customer %s", customer_id)
    return link
