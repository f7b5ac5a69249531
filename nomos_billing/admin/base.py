"""What our admins share: the mirror's read-only rules, the ``link_customer`` permission
on link actions, and the context of our own admin pages."""

from __future__ import annotations

from typing import Any

import django
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

from ..counts import CountingPaginator

#: ``linked_by`` and the signals' ``resolver`` / ``unlinked_by`` for a link made by hand.
ADMIN = "admin"
#: The permission that makes, undoes and decides links by hand.
LINK_PERMISSION = "nomos_billing.link_customer"
#: Errors a bulk action quotes in its message; the rest are counted.
REPORTED_ERRORS = 3


class LinkPermissionMixin:
    """Actions marked ``permissions=["link"]`` need ``nomos_billing.link_customer``.

    Django leaves such an action out of the menu for others, but answers a POST naming it with
    a redirect and a message; here that POST (the action, its intermediate form, its confirm
    step) is refused with 403 before anything runs."""

    def has_link_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.has_perm(LINK_PERMISSION))

    def _link_actions(self) -> set[str]:
        names = set()
        for action in getattr(self, "actions", None) or []:
            func = getattr(self, action, None) if isinstance(action, str) else action
            if func is not None and "link" in getattr(func, "allowed_permissions", ()):
                names.add(func.__name__)
        return names

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if request.method == "POST":
            named = set(request.POST.getlist("action"))
            if named & self._link_actions() and not self.has_link_permission(request):
                raise PermissionDenied
        return super().changelist_view(request, extra_context)  # type: ignore[misc]


def admin_page_context(model_admin: admin.ModelAdmin, request: HttpRequest) -> dict[str, Any]:
    """What our admin pages share: the site's context and the breadcrumb markup the running
    Django styles (a list from 6.0 on, a ``div`` before)."""
    return {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "nomos_breadcrumbs_list": django.VERSION >= (6, 0),
    }


class MirrorAdmin(admin.ModelAdmin):
    """Read-only mirror of Nomos: every field read-only, no Add, no Delete, no Save buttons."""

    # Counts that cost the same at a million rows: estimated or bounded, and said so.
    paginator = CountingPaginator

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields] + list(self.readonly_fields)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        # Nothing on the form is editable, so a Save would only pretend to do something.
        extra_context = {
            **(extra_context or {}),
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
        }
        return super().change_view(request, object_id, form_url, extra_context)
