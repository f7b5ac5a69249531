"""The subscriptions' and leads' admins: read-only mirrors."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from ..models import NomosLead, NomosSubscription
from .base import MirrorAdmin


@admin.register(NomosSubscription)
class NomosSubscriptionAdmin(MirrorAdmin):
    list_display = [
        "subscription_id",
        "customer",
        "status",
        "plan",
        "type",
        "start_at",
        "nomos_updated_at",
    ]
    list_filter = ["status", "type"]
    list_select_related = ["customer"]
    search_fields = [
        "subscription_id__exact",
        "customer__customer_id__exact",
        "customer__email__exact",
        "lead_id__exact",
    ]
    show_full_result_count = False

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        # Ids alone, each on its own index (see NomosCustomerAdmin.get_search_results).
        term = search_term.strip()
        if " " not in term:
            for prefix, lookup in (
                ("sub_", "subscription_id"),
                ("cus_", "customer__customer_id"),
                ("lead_", "lead_id"),
            ):
                if term.startswith(prefix):
                    return queryset.filter(**{lookup: term}), False
        return super().get_search_results(request, queryset, search_term)


@admin.register(NomosLead)
class NomosLeadAdmin(MirrorAdmin):
    # Created by the lead form for the signed-in user; the by_lead resolver trusts these rows,
    # so nobody edits them here.
    list_display = ["lead_id", "user", "plan", "created_at"]
    list_select_related = ["user"]
    search_fields = ["lead_id__exact"]
