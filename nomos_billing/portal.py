"""Sending a signed-in user to their Nomos customer portal.

``mint_portal_link(user, next=None)`` is the one entry point: views, template tags and a site's
own API views call it. The customer id always comes from our database row for ``user``, never
from the request. A magic link is a bearer credential (whoever opens it is signed in), so it is
never logged; the customer id is.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from django.utils import timezone
from django.utils.http import is_same_domain

from . import ratelimit
from .client import get_client
from .conf import DEFAULT_CHECKOUT_HOST_SUFFIX, DEFAULT_PORTAL_HOST_SUFFIX, nomos_settings
from .deeplinks import clean_next, preview
from .exceptions import NomosAPIError, NomosNotLinked

logger = logging.getLogger("nomos_billing.portal")

INVALID_LINK = "INVALID_LINK"

__all__ = [
    "INVALID_LINK",
    "RECENT_CHECKOUT",
    "checkout_hosts",
    "customer_id_of",
    "get_customer",
    "has_recent_checkout",
    "is_allowed_link",
    "is_checkout_link",
    "link_kind",
    "link_recent_checkout",
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
_RECENT_CHECKOUT_ATTR = "_nomos_recent_checkout"


#: How far back a click looks for the user's own checkout (a lead this site created for them)
#: when they are not linked yet: they came back from Nomos' checkout before its webhook did.
RECENT_CHECKOUT = timedelta(days=1)
#: ... and asks Nomos about this many of those leads at most, the newest first: each sign-up
#: form sent makes a lead, and a click has a few seconds.
RECENT_CHECKOUT_LEADS = 3


def _related(user: Any) -> Any:
    """The reverse one-to-one (``nomos_customer``) of a signed-in user of the site's user model;
    ``None`` for anonymous users and for stand-ins that are not that model (token auth).
    ``__class__``, not ``type()``: request.user is a SimpleLazyObject."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    try:
        return user.__class__.nomos_customer.related
    except AttributeError:
        return None


def customer_id_of(user: Any) -> str | None:
    """The user's Nomos customer id, or ``None`` (anonymous, or no customer).

    The row Django already holds for ``user`` (``get_customer`` ran in this request) is used as
    it is; otherwise one query reads the id alone: a click needs nothing else, and loading the
    whole row costs it more than the rest of our checks together. Asked again for the same user
    object, it answers without a query.
    """
    related = _related(user)
    if related is None:
        return None
    if related.is_cached(user):
        customer = get_customer(user)
        return customer.customer_id if customer is not None else None
    known = getattr(user, _CUSTOMER_ID_ATTR, None)
    if known is None:
        from .models import NomosCustomer

        ids = NomosCustomer.objects.filter(user_id=user.pk).order_by()  # one row: no ORDER BY
        known = next(iter(ids.values_list("customer_id", flat=True)[:1]), _NONE)
        setattr(user, _CUSTOMER_ID_ATTR, known)
    return known or None


def has_recent_checkout(user: Any) -> bool:
    """True when ``user`` has a lead from the last ``RECENT_CHECKOUT`` that has not been settled
    against them: no stored subscription names it, or the one that does belongs to a customer
    that is not linked to another user and whose link was not rejected. They may have just
    signed up, so the button offers the portal (whose view asks Nomos) rather than a second
    sign-up. One query, no Nomos call.

    The webhook stores the subscription and links (or holds) its customer one after the other,
    and a page asks "linked?", "held?", "recent checkout?" one after the other too: a lead that
    is being linked, or was linked to this user or held for them meanwhile, still counts, so
    that no interleaving of the two answers "nothing" in between."""
    if _related(user) is None:
        return False
    known = getattr(user, _RECENT_CHECKOUT_ATTR, None)
    if known is None:
        from django.db.models import Exists, OuterRef, Q

        from .models import ClaimStatus, NomosLead, NomosLinkClaim, NomosSubscription

        # Claims are per customer and user: only this user's rejected claim settles the lead.
        rejected = NomosLinkClaim.objects.filter(
            status=ClaimStatus.REJECTED, user_id=user.pk
        ).values("customer_id")
        settled_elsewhere = NomosSubscription.objects.filter(lead_id=OuterRef("lead_id")).filter(
            (Q(customer__user__isnull=False) & ~Q(customer__user_id=user.pk))
            | Q(customer_id__in=rejected)
        )
        known = (
            NomosLead.objects.filter(
                user_id=user.pk, created_at__gte=timezone.now() - RECENT_CHECKOUT
            )
            .filter(~Exists(settled_elsewhere))
            .exists()
        )
        setattr(user, _RECENT_CHECKOUT_ATTR, known)
    return bool(known)


def link_recent_checkout(user: Any) -> str | None:
    """The customer id of ``user`` once their recent checkout has been asked about.

    For a signed-in user who is not linked: each lead this site created for them in the last
    ``RECENT_CHECKOUT`` that no stored subscription names yet (the newest
    ``RECENT_CHECKOUT_LEADS``) is looked up at Nomos
    (``GET /leads/{id}``, as ``nomos_sync`` does); a converted one is stored and linked to them
    (``by_lead``: our own database says whose lead it is). One query and no Nomos call for a
    user without such a lead. Raises ``NomosError`` when Nomos cannot be asked, and
    ``RateLimited`` (no call made) past the user's ``RATE_LIMITS["recent_checkout"]``.
    """
    related = _related(user)
    if related is None:
        return None
    if not has_recent_checkout(user):
        return None
    # Only clicks that would ask Nomos count: the page for a user without leads costs nothing.
    ratelimit.hit(user, "recent_checkout")
    from .sync import check_open_leads

    _, converted, _ = check_open_leads(
        user=user, since=timezone.now() - RECENT_CHECKOUT, newest=RECENT_CHECKOUT_LEADS
    )
    if not converted:
        return None
    # Linked (by us or by the webhook just now) through another object of this user: forget
    # what this one remembers of "no customer".
    if related.is_cached(user):
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


def is_allowed_link(link: str, *, hosts: list[str] | None = None) -> bool:
    """True if ``link`` is https (http too against a loopback sandbox API) on a configured
    portal or checkout host (``hosts`` overrides both)."""
    if hosts is None:
        return link_kind(link) is not None
    host = _https_host(link)
    return host is not None and _on(host, hosts)


def is_checkout_link(link: str) -> bool:
    """True if ``link`` goes to the hosted checkout rather than the portal (Nomos' answer for a
    customer without a subscription); a portal page (``next``) means nothing there."""
    return link_kind(link) == "checkout"


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
    customer_id = customer_id_of(user) or link_recent_checkout(user)
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
