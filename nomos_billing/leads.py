"""Leads: the checkouts this site started for its users, and what became of them.

The lead form stores one (``record_lead``); a lead that no stored subscription names yet is
*open* (``open_leads``). ``check_open_leads`` asks Nomos about open leads and stores and links
the subscription of each that converted (``nomos_sync``, and a click right after a checkout:
``link_recent_checkout``). Who a converted lead's customer is, ``linking.by_lead`` decides.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from . import linking, ratelimit
from .client import get_client
from .exceptions import NomosAPIError
from .models import ClaimStatus, NomosLead, NomosLinkClaim, NomosSubscription
from .sync import upsert_from_subscription

logger = logging.getLogger("nomos_billing.leads")

#: How far back a click looks for the user's own checkout (a lead this site created for them)
#: when they are not linked yet: they came back from Nomos' checkout before its webhook did.
RECENT_CHECKOUT = timedelta(days=1)
#: ... and asks Nomos about this many of those leads at most, the newest first: each sign-up
#: form sent makes a lead, and a click has a few seconds.
RECENT_CHECKOUT_LEADS = 3

#: Where ``has_recent_checkout`` keeps its answer on the user object: within a request, the
#: button and the click ask once.
_RECENT_CHECKOUT_ATTR = "_nomos_recent_checkout"


def record_lead(lead_id: str, user: Any, plan: str) -> NomosLead:
    """Remember the lead Nomos made for ``user``'s sign-up form: ``by_lead`` links its
    subscription to them."""
    lead = NomosLead.objects.create(lead_id=lead_id, user=user, plan=plan)
    logger.info("lead %s created for user %s", lead_id, user.pk)
    return lead


def open_leads(*, user: Any = None, since: datetime | None = None) -> QuerySet[NomosLead]:
    """Leads we created that no stored subscription names yet, newest first; ``user`` and
    ``since`` narrow them to one user's created since then."""
    named = NomosSubscription.objects.filter(lead_id=OuterRef("lead_id"))
    leads = NomosLead.objects.filter(~Exists(named))
    if user is not None:
        leads = leads.filter(user_id=user.pk)
    if since is not None:
        leads = leads.filter(created_at__gte=since)
    return leads.order_by("-created_at", "-pk")


def check_open_leads(
    client: Any = None,
    *,
    user: Any = None,
    since: datetime | None = None,
    newest: int | None = None,
) -> tuple[int, int, int]:
    """Ask Nomos about each lead we created that no subscription of ours names yet
    (``GET /leads/{id}``); store and link the subscription of each that converted.

    For a site whose webhooks were lost: the lead, not the subscription's metadata, tells whose
    subscription it is. ``user`` and ``since`` narrow it to one user's leads created since then,
    ``newest`` to that many of the newest (a click right after the checkout, before its
    webhook, asks about a few, not every form the user ever sent). Returns ``(checked, converted,
    linked)``. Raises ``NomosError`` when Nomos cannot be asked (what was stored before stays).
    """
    client = client or get_client()
    lead_ids = open_leads(user=user, since=since).values_list("lead_id", flat=True)
    if newest is not None:
        lead_ids = lead_ids[:newest]
    checked = converted = linked = 0
    # Ids only, read at once: a server-side cursor (iterator() on PostgreSQL) would hold a
    # transaction open across the GET /leads calls below.
    for lead_id in list(lead_ids):
        checked += 1
        try:
            lead = client.get_lead(lead_id)
        except NomosAPIError as exc:
            if not exc.is_not_found:
                raise
            # Gone at Nomos (or never there): nothing will convert; the others still count.
            logger.info("lead %s is unknown to Nomos (404); skipped", lead_id)
            continue
        subscription_id = lead.get("subscription") if isinstance(lead, dict) else None
        if not isinstance(subscription_id, str) or not subscription_id:
            continue
        converted += 1
        existing = (
            NomosSubscription.objects.select_related("customer")
            .filter(subscription_id=subscription_id)
            .first()
        )
        if existing is None:
            data = client.get_subscription(subscription_id)
            linked += upsert_from_subscription(data, lead_id=lead_id).linked
            continue
        if not existing.lead_id:
            NomosSubscription.objects.filter(pk=existing.pk, lead_id="").update(lead_id=lead_id)
        if not existing.customer.is_linked:
            linked += linking.link_customer(
                linking.LinkRequest(customer=existing.customer, lead_id=lead_id)
            )
    return checked, converted, linked


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
    if linking.customer_relation(user) is None:
        return False
    known = getattr(user, _RECENT_CHECKOUT_ATTR, None)
    if known is None:
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


def link_recent_checkout(user: Any) -> bool:
    """Link ``user`` through their recent checkout; True when one of their leads converted.

    For a signed-in user who is not linked: each lead this site created for them in the last
    ``RECENT_CHECKOUT`` that no stored subscription names yet (the newest
    ``RECENT_CHECKOUT_LEADS``) is looked up at Nomos (``check_open_leads``, as ``nomos_sync``
    does); a converted one is stored and linked to them (``by_lead``: our own database says
    whose lead it is). One query and no Nomos call for a user without such a lead. Raises
    ``NomosError`` when Nomos cannot be asked, and ``RateLimited`` (no call made) past the
    user's ``RATE_LIMITS["recent_checkout"]``.
    """
    if not has_recent_checkout(user):
        return False
    # Only clicks that would ask Nomos count: the page for a user without leads costs nothing.
    ratelimit.hit(user, "recent_checkout")
    _, converted, _ = check_open_leads(
        user=user, since=timezone.now() - RECENT_CHECKOUT, newest=RECENT_CHECKOUT_LEADS
    )
    return converted > 0
