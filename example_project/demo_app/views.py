"""The example site's one page: who you are, your Nomos subscriptions, the portal button."""

from __future__ import annotations

from django.core.exceptions import ObjectDoesNotExist
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def home(request: HttpRequest) -> HttpResponse:
    customer = None
    subscriptions: list = []
    if request.user.is_authenticated:
        try:
            customer = request.user.nomos_customer  # type: ignore[union-attr]
        except ObjectDoesNotExist:
            customer = None
        if customer is not None:
            subscriptions = list(customer.subscriptions.order_by("-nomos_created_at", "pk"))
    return render(request, "demo_app/home.html",
                  {"customer": customer, "subscriptions": subscriptions})
