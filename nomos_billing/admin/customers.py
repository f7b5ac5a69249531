"""The customers' admin (refresh, link, unlink) and the held links' (confirm, reject)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .. import confirmation, linking, sync
from ..exceptions import NomosError
from ..models import NomosCustomer, NomosLinkClaim, NomosSubscription
from .base import ADMIN, REPORTED_ERRORS, LinkPermissionMixin, MirrorAdmin, admin_page_context
from .filters import LatestStatusFilter, LinkedFilter
from .forms import LinkUserForm, UserAutocomplete

_INLINE_FIELDS = ("subscription_id", "status", "plan", "type", "start_at", "end_at")


class SubscriptionInline(admin.TabularInline):
    model = NomosSubscription
    extra = 0
    can_delete = False
    show_change_link = True
    fields = _INLINE_FIELDS
    readonly_fields = _INLINE_FIELDS

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(NomosCustomer)
class NomosCustomerAdmin(LinkPermissionMixin, MirrorAdmin):
    list_display = ["customer_id", "user", "email", "latest_status", "linked"]
    list_filter = [LinkedFilter, LatestStatusFilter, "type"]
    list_select_related = ["user"]
    inlines = [SubscriptionInline]
    actions = ["refresh_from_nomos", "link_to_user", "unlink"]

    show_full_result_count = False

    def get_search_fields(self, request: HttpRequest) -> list[str]:
        # Exact matches, which indexes answer; not every user model has username/email.
        User = get_user_model()  # noqa: N806
        fields = ["customer_id__exact", "email__exact", f"user__{User.USERNAME_FIELD}__exact"]
        email_field = User.get_email_field_name()
        if email_field in {f.name for f in User._meta.get_fields()}:
            fields.append(f"user__{email_field}__exact")
        return list(dict.fromkeys(fields))

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        # An id is looked up alone: OR-ing it with the user's columns across the join makes
        # the database scan every customer instead of using the unique index.
        term = search_term.strip()
        if term.startswith("cus_") and " " not in term:
            return queryset.filter(customer_id=term), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description=_("latest subscription"), ordering="latest_status")
    def latest_status(self, obj: NomosCustomer) -> str:
        return obj.get_latest_status_display() if obj.latest_status else "-"

    @admin.display(description=_("linked"), boolean=True, ordering="user")
    def linked(self, obj: NomosCustomer) -> bool:
        return obj.is_linked

    def user_autocomplete(self, request: HttpRequest) -> forms.Widget | None:
        """Django's autocomplete on this model's ``user`` field, where its view would answer
        this operator: the site's user admin has ``search_fields`` and lets them view users.
        Otherwise ``None``, and the form takes a typed id or login name."""
        User = get_user_model()  # noqa: N806
        user_admin = self.admin_site._registry.get(User)
        if user_admin is None or not user_admin.get_search_fields(request):
            return None
        if not user_admin.has_view_permission(request):
            return None
        return UserAutocomplete(
            self.model._meta.get_field("user"),
            self.admin_site,
            attrs={"data-placeholder": _("Search users…"), "style": "width: 30em"},
        )

    @admin.action(description=_("Refresh from Nomos"), permissions=["change"])
    def refresh_from_nomos(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Every selected customer is tried (an error stops nothing); each refreshed one is a
        ``LogEntry``, and the message counts both."""
        done = failed = 0
        errors: list[str] = []
        for customer in queryset:
            try:
                sync.refresh_customer(customer)
            except NomosError as exc:
                failed += 1
                if len(errors) < REPORTED_ERRORS:
                    errors.append(f"{customer.customer_id}: {exc}")
                continue
            done += 1
            self.log_change(request, customer, "Refreshed from Nomos by an admin.")
        if done:
            self.message_user(
                request,
                ngettext(
                    "Refreshed %(count)d customer from Nomos.",
                    "Refreshed %(count)d customers from Nomos.",
                    done,
                )
                % {"count": done},
                messages.SUCCESS,
            )
        if failed:
            self.message_user(
                request,
                ngettext(
                    "Refreshing %(count)d customer failed: %(errors)s",
                    "Refreshing %(count)d customers failed: %(errors)s",
                    failed,
                )
                % {
                    "count": failed,
                    "errors": "; ".join(errors) + ("; …" if failed > len(errors) else ""),
                },
                messages.ERROR,
            )

    @admin.action(description=_("Link to a user…"), permissions=["link"])
    def link_to_user(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse | None:
        unlinked = list(queryset.filter(user__isnull=True)[:2])
        if len(unlinked) != 1:
            self.message_user(
                request, _("Select exactly one unlinked customer to link."), messages.WARNING
            )
            return None
        customer = unlinked[0]
        form = LinkUserForm(
            request.POST if "apply" in request.POST else None,
            autocomplete=self.user_autocomplete(request),
        )
        if form.is_bound and form.is_valid():
            user = form.cleaned_data["user"]
            if linking.attach_user(customer, user, ADMIN):
                self.log_change(
                    request, customer, f"Linked to user {user.pk} ({user}) by an admin."
                )
                self.message_user(
                    request,
                    _("Linked %(customer)s to %(user)s.")
                    % {"customer": customer.customer_id, "user": user},
                    messages.SUCCESS,
                )
            else:
                self.message_user(
                    request,
                    _(
                        "%(customer)s was not linked: it is already "
                        "linked, or the user holds another customer."
                    )
                    % {"customer": customer.customer_id},
                    messages.ERROR,
                )
            return None
        context = {
            **admin_page_context(self, request),
            "title": _("Link a Nomos customer to a user"),
            "customer": customer,
            "form": form,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "action": "link_to_user",
        }
        return TemplateResponse(request, "nomos_billing/admin_link_customer.html", context)

    @admin.action(description=_("Unlink from the user…"), permissions=["link"])
    def unlink(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse | None:
        linked = list(queryset.filter(user__isnull=False).select_related("user"))
        if not linked:
            self.message_user(request, _("Select at least one linked customer."), messages.WARNING)
            return None
        if "confirm" not in request.POST:
            context = {
                **admin_page_context(self, request),
                "title": _("Unlink Nomos customers from their users?"),
                "customers": linked,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
                "action": "unlink",
            }
            return TemplateResponse(request, "nomos_billing/admin_unlink_customer.html", context)
        done = 0
        for customer in linked:
            user = linking.detach_user(customer, ADMIN)
            if user is None:
                continue
            done += 1
            self.log_change(
                request, customer, f"Unlinked from user {user.pk} ({user}) by an admin."
            )
        self.message_user(
            request,
            ngettext(
                "Unlinked %(count)d customer from its user.",
                "Unlinked %(count)d customers from their users.",
                done,
            )
            % {"count": done},
            messages.SUCCESS,
        )
        return None


@admin.register(NomosLinkClaim)
class NomosLinkClaimAdmin(LinkPermissionMixin, MirrorAdmin):
    """Held links (``confirmation.py``): a lead or signed reference named a user whose address
    is not the customer's. The customer's mailbox confirms; an operator may decide instead."""

    list_display = ["customer", "user", "rule", "status", "created_at", "sent_at", "decided_by"]
    list_filter = ["status", "rule"]
    list_select_related = ["customer", "user"]
    search_fields = ["customer__customer_id__exact"]
    actions = ["confirm_claims", "reject_claims"]
    show_full_result_count = False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # The nonce is the confirmation link's secret half: never shown.
        return [f.name for f in self.model._meta.fields if f.name != "nonce"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.get_readonly_fields(request, obj)

    def _decided(self, request: HttpRequest, claim: NomosLinkClaim, what: str) -> None:
        user = claim.user
        self.log_change(request, claim, f"{what} by an admin (user {user.pk}).")
        self.log_change(request, claim.customer, f"Held link to user {user.pk} {what.lower()}.")

    @admin.action(description=_("Confirm: link the customer to this user"), permissions=["link"])
    def confirm_claims(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        done = refused = 0
        for claim in queryset.select_related("customer", "user"):
            if confirmation.confirm_by_operator(claim, request.user) == "linked":
                done += 1
                self._decided(request, claim, "Confirmed")
            else:
                refused += 1
        self.message_user(
            request,
            _("Confirmed %(done)d held links; %(refused)d could not be linked.")
            % {"done": done, "refused": refused},
            messages.ERROR if refused else messages.SUCCESS,
        )

    @admin.action(description=_("Reject: link nobody"), permissions=["link"])
    def reject_claims(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        done = 0
        for claim in queryset.select_related("customer", "user"):
            if confirmation.reject(claim, request.user):
                done += 1
                self._decided(request, claim, "Rejected")
        self.message_user(
            request, _("Rejected %(done)d held links.") % {"done": done}, messages.SUCCESS
        )
