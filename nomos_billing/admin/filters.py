"""The admin's list filters."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from ..models import NomosSubscription, WebhookEvent
from ..topics import TOPICS


class LinkedFilter(admin.SimpleListFilter):
    title = _("linked to a user")
    parameter_name = "linked"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("Linked")), ("no", _("Unlinked"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(user__isnull=False)
        if self.value() == "no":
            return queryset.filter(user__isnull=True)
        return queryset


class LatestStatusFilter(admin.SimpleListFilter):
    title = _("latest subscription status")
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [*NomosSubscription.Status.choices, ("none", _("No subscription"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == "none":
            return queryset.filter(latest_status="")
        if value in NomosSubscription.Status.values:
            return queryset.filter(latest_status=value)
        return queryset


class TopicFilter(admin.SimpleListFilter):
    title = _("topic")
    parameter_name = "topic"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [(topic, topic) for topic in TOPICS]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        # Any value, so that a topic Nomos adds later can still be filtered by URL.
        return queryset.filter(topic=self.value()) if self.value() else queryset


class StuckFilter(admin.SimpleListFilter):
    """Events a dead worker left ``processing`` past the claim timeout; "Process again" (or
    ``nomos_replay --stuck``) takes them over."""

    title = _("stuck")
    parameter_name = "stuck"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("Stuck in processing"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            # On the list's own rows: the (status, received_at) index serves filter and order.
            return queryset & WebhookEvent.objects.stuck()
        return queryset
