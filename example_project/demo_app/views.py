"""The example site's one page: who you are, your Nomos subscriptions, the portal button.

The page says what the button next to it does, from the same live state the button reads:
linked (the customer and subscriptions), a contract waiting for its mailbox's confirmation (a
held link), a sign-up that has reached Nomos but not this site yet (a recent lead: right after
the hosted checkout, before Nomos' webhook arrives), or nothing yet.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from nomos_billing.confirmation import held_context, pending_claim
from nomos_billing.leads import has_recent_checkout


def link_state(user: Any) -> dict[str, Any]:
    """``state`` is "linked", "held", "checkout" or "none", with what the page shows of it."""
    try:
        customer = user.nomos_customer
    except ObjectDoesNotExist:
        customer = None
    if customer is not None:
        subscriptions = list(customer.subscriptions.order_by("-nomos_created_at", "pk"))
        return {"state": "linked", "customer": customer, "subscriptions": subscriptions}
    claim = pending_claim(user)
    if claim is not None:
        return {"state": "held", "held": held_context(claim)}
    if has_recent_checkout(user):
        return {"state": "checkout"}
    return {"state": "none"}


def home(request: HttpRequest) -> HttpResponse:
    context: dict[str, Any] = {"state": None}
    if request.user.is_authenticated:
        context = link_state(request.user)
    return render(request, "demo_app/home.html", context)
