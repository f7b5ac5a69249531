"""Admin for Nomos customers, subscriptions, leads and webhook events.

The admin mirrors Nomos, it does not edit it: every field Nomos owns is read-only, nothing can
be added here, and only webhook events can be deleted (pruning). The one thing we own, which
user a customer belongs to, changes only through the explicit *Link to a user* and *Unlink*
actions and the *Confirm* / *Reject* actions on held links, each recorded in the admin history
(``LogEntry``), in ``linked_by``, in the log and by a signal; a POST to the change form cannot
move a customer, whatever it contains. Those actions need the ``link_customer`` permission of
their own ("change" is not enough: a link opens a person's contract and bank details), and a
POST naming one without it is answered 403.

Every list costs the same number of queries however many rows it shows (foreign keys are
``list_select_related``), and the same time at 1M events as at 1k: counts are estimated or
bounded and say so (``counts.CountingPaginator``), searches match ids
exactly (index lookups, not ``LIKE '%...%'`` scans), the latest subscription status is a column
of the customer row (kept by ``sync``), topic choices come from Nomos' documented topics instead
of a ``DISTINCT`` over the table, there is no ``date_hierarchy`` (another ``DISTINCT`` scan) and
every default ordering and filter has an index.
No setting and no secret is shown anywhere; event payloads carry ids only.
"""

from __future__ import annotations

import json
from typing import Any

import django
from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.widgets import AutocompleteSelect
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import confirmation, health, lifecycle, linking, processing, sync, tasks
from .counts import CountingPaginator
from .exceptions import EnqueueError, NomosError
from .models import NomosCustomer, NomosLead, NomosLinkClaim, NomosSubscription, WebhookEvent
from .topics import TOPICS

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


class UserField(forms.ModelChoiceField):
    """A user by the autocomplete's id, or typed: a login name, else a numeric id."""

    def to_python(self, value: Any) -> Any:
        if value in self.empty_values:
            return None
        text = str(value).strip()
        User = get_user_model()  # noqa: N806
        queryset = self.queryset if self.queryset is not None else User._default_manager.all()
        user = queryset.filter(**{User.USERNAME_FIELD: text}).first()
        # ASCII digits only, and no more than a 64-bit key has: never a lenient or huge number.
        if user is None and text.isascii() and text.isdigit() and len(text) <= 18:
            user = queryset.filter(pk=int(text)).first()
        if user is None:
            raise ValidationError(self.error_messages["invalid_choice"], code="invalid_choice")
        return user


class UserAutocomplete(AutocompleteSelect):
    """Django admin's user autocomplete (the user admin's ``search_fields``)."""

    def build_attrs(self, base_attrs: dict[str, Any], extra_attrs: Any = None) -> dict[str, Any]:
        attrs = super().build_attrs(base_attrs, extra_attrs)
        # Django blanks data-placeholder (select2 clears only with one); ours says what to type.
        attrs["data-placeholder"] = base_attrs.get("data-placeholder", "")
        return attrs

    def optgroups(self, name: str, value: Any, attr: Any = None) -> Any:
        try:
            return super().optgroups(name, value, attr)
        except (ValueError, ValidationError):
            # A login name posted without the browser's widget is no id to show as chosen.
            return super().optgroups(name, [], attr)


class LinkUserForm(forms.Form):
    """The user for *Link to a user*: searched with ``autocomplete`` (a widget for the user
    admin's autocomplete view), else typed as an id or login name."""

    def __init__(self, *args: Any, autocomplete: forms.Widget | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        User = get_user_model()  # noqa: N806
        self.fields["user"] = UserField(
            queryset=User._default_manager.all(),
            label=_("User"),
            widget=autocomplete or forms.TextInput(attrs={"maxlength": 150, "autofocus": True}),
            help_text=_("Type to search the site's users.")
            if autocomplete
            else _("The user's id or login name (username or e-mail, per the user model)."),
            error_messages={"invalid_choice": _("No user with this id or login name.")},
        )

    def clean_user(self) -> Any:
        user = self.cleaned_data["user"]
        if not getattr(user, "is_active", True):
            # As every other path (the resolvers, a held link's confirmation): never an
            # account that cannot sign in.
            raise forms.ValidationError(_("This user is inactive."))
        if NomosCustomer.objects.filter(user=user).exists():
            raise forms.ValidationError(_("This user is already linked to a Nomos customer."))
        return user


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
