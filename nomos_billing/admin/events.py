"""The webhook events' admin (process again) and the operator's health page."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from .. import health, lifecycle, processing, tasks
from ..exceptions import EnqueueError
from ..models import WebhookEvent
from .base import MirrorAdmin, admin_page_context
from .filters import StuckFilter, TopicFilter


@admin.register(WebhookEvent)
class WebhookEventAdmin(MirrorAdmin):
    list_display = [
        "event_id",
        "topic",
        "status",
        "claim_age",
        "received_at",
        "attempts",
        "deliveries",
    ]
    list_filter = ["status", StuckFilter, TopicFilter]
    search_fields = ["event_id__exact"]
    show_full_result_count = False
    exclude = ["payload"]
    actions = ["process_again"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields if f.name != "payload"] + ["pretty_payload"]

    def get_urls(self) -> list[Any]:
        from django.urls import path

        return [
            path(
                "health/", self.admin_site.admin_view(self.health_view), name="nomos_billing_health"
            ),
            *super().get_urls(),
        ]

    def health_view(self, request: HttpRequest) -> HttpResponse:
        """The operator's page (``health.collect``): staff with view permission on events."""
        if not self.has_view_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        context = {
            **admin_page_context(self, request),
            "title": _("Nomos health"),
            "health": health.collect(),
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "nomos_billing/admin_health.html", context)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Pruning the delivery log is the one deletion that means something here.
        return admin.ModelAdmin.has_delete_permission(self, request, obj)

    @admin.display(description=_("in processing for"))
    def claim_age(self, obj: WebhookEvent) -> str:
        """How long a claim has been held; flagged once a dead worker must have left it."""
        if obj.status != WebhookEvent.Status.PROCESSING or obj.claimed_at is None:
            return ""
        now = timezone.now()
        text = _("%(seconds)d s") % {"seconds": int((now - obj.claimed_at).total_seconds())}
        if lifecycle.is_stuck(obj, now):
            return _("%(age)s (stuck)") % {"age": text}
        return text

    @admin.display(description=_("payload"))
    def pretty_payload(self, obj: WebhookEvent) -> str:
        text = json.dumps(obj.payload, indent=2, sort_keys=True, ensure_ascii=False)
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', text)

    @admin.action(description=_("Process again"), permissions=["change"])
    def process_again(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        if tasks.backend_alias() is not None:
            self._enqueue_again(request, queryset)
            return
        counts = {"processed": 0, "failed": 0, "busy": 0}
        for event in queryset:
            result = processing.process_event(event, force=True)
            if not result.claimed:
                counts["busy"] += 1
                continue
            failed = result.status == WebhookEvent.Status.FAILED
            counts["failed" if failed else "processed"] += 1
            self.log_change(
                request, event, f"Processed again by an admin: {'failed' if failed else 'done'}."
            )
        level = messages.ERROR if counts["failed"] else messages.SUCCESS
        self.message_user(
            request,
            _(
                "Processed again: %(processed)d done, %(failed)d failed, %(busy)d in progress "
                "elsewhere."
            )
            % counts,
            level,
        )

    def _enqueue_again(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """With ``TASK_BACKEND``: hand the events to the worker instead of making the operator
        wait on Nomos in the request."""
        counts = {"queued": 0, "refused": 0}
        for event in queryset.only("pk", "event_id"):
            try:
                tasks.enqueue(event.event_id, force=True)
            except EnqueueError:
                counts["refused"] += 1
            else:
                counts["queued"] += 1
                self.log_change(request, event, "Queued again for the task worker by an admin.")
        level = messages.ERROR if counts["refused"] else messages.SUCCESS
        self.message_user(
            request,
            _(
                "Queued again for the task worker: %(queued)d queued, %(refused)d refused by "
                "the queue."
            )
            % counts,
            level,
        )
