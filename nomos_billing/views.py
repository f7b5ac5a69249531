"""The portal views: the button's redirect, the JSON endpoint for apps, and the lead form.

Every answer that carries a magic link is ``no-store``: the link is a single-use credential and
must not be cached by the browser or a proxy. What a failure shows is ``pages``'.
"""

from __future__ import annotations

import json
import logging
from typing import Any, TypeGuard

from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import redirect
from django.utils.cache import add_never_cache_headers
from django.utils.functional import Promise
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from . import ratelimit
from .client import get_client
from .conf import nomos_settings
from .exceptions import NomosAPIError, NomosError
from .forms import LeadForm
from .http import HttpResponseSeeOther
from .leads import record_lead
from .pages import (
    DEFAULT_RETRY_AFTER,
    NOT_LINKED_KINDS,
    START_TEMPLATE,
    UNAVAILABLE_TEXT,
    click_budget,
    is_operator_error,
    lead_try_again_page,
    log_failure,
    no_customer_page,
    page,
    rate_limited_page,
    retry_after_of,
    signed_in_page,
    unavailable_page,
)
from .portal import get_customer, is_allowed_link, mint_portal_link

logger = logging.getLogger("nomos_billing.views")


# -- the button ----------------------------------------------------------------------------


def is_prefetch(request: HttpRequest) -> bool:
    """A browser's speculative load (``Sec-Purpose: prefetch``, possibly with ``;prerender``;
    Chrome's legacy ``Purpose: prefetch``; Firefox's old ``X-Moz: prefetch``)."""
    # META, not request.headers: building HttpHeaders costs every click more than this check.
    for header in ("HTTP_SEC_PURPOSE", "HTTP_PURPOSE", "HTTP_X_MOZ"):
        value = request.META.get(header)
        if not value or not isinstance(value, str):
            continue
        tokens = {t.strip().lower() for t in value.replace(";", ",").split(",")}
        if "prefetch" in tokens or "prerender" in tokens:
            return True
    return False


def _requested_next(request: HttpRequest) -> str | None:
    value = request.POST.get("next") if request.method == "POST" else None
    return value or request.GET.get("next") or None


@signed_in_page("GET", "POST")
def portal(request: HttpRequest) -> HttpResponse:
    """Mint a fresh link and redirect to it: 303 after the button's POST, 302 for a GET link."""
    if request.method == "GET" and is_prefetch(request):
        # A hover or a speculation rule is not a click: minting would spend an API call and a
        # single-use link the user never sees. Any non-2xx makes the browser drop the
        # prefetch and load the page for real on the click; never_cache keeps it uncached.
        return HttpResponse(
            "Not prefetched: the portal link is made when you click.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    try:
        ratelimit.hit(request.user, "portal")
        with click_budget():
            link = mint_portal_link(request.user, next=_requested_next(request))
    except NomosError as exc:
        log_failure(exc, request.user)
        if exc.kind in NOT_LINKED_KINDS:
            return no_customer_page(request)
        return unavailable_page(request, exc)
    if request.method == "POST":
        return HttpResponseSeeOther(link)
    return HttpResponseRedirect(link)


# -- JSON for apps -------------------------------------------------------------------------


def _json_error(status: int, code: str, message: str | Promise, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": message, "code": code}, status=status)
    for name, value in headers.items():
        response[name] = value
    add_never_cache_headers(response)
    return response


def _json_unavailable(retry_after: int, *, database: bool = False) -> JsonResponse:
    """The JSON 503 of an outage, Nomos' or (``database``, logged here) our database's."""
    if database:
        logger.exception("portal/link/: the database is unavailable")
    return _json_error(503, "unavailable", UNAVAILABLE_TEXT, **{"Retry-After": str(retry_after)})


def _json_next(request: HttpRequest) -> str | None:
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except ValueError:
            return None
        value = data.get("next") if isinstance(data, dict) else None
        return value if isinstance(value, str) else None
    return _requested_next(request)


class _JsonCsrfCheck(CsrfViewMiddleware):
    """Django's CSRF check, answering its refusal in JSON instead of the HTML 403 page."""

    def _reject(self, request: HttpRequest, reason: str) -> HttpResponse:
        logger.warning("portal/link/ refused: CSRF check failed (%s)", reason)
        return _json_error(
            403, "csrf_failed", _("Your session has expired. Please reload the page and try again.")
        )


def _checked_view(request: HttpRequest) -> HttpResponse:
    # What the CSRF check is told it guards: a view that is not csrf_exempt.
    return HttpResponse()


_csrf_check = _JsonCsrfCheck(_checked_view)


def _csrf_refusal(request: HttpRequest) -> HttpResponse | None:
    _csrf_check.process_request(request)
    return _csrf_check.process_view(request, _checked_view, (), {})


# Every answer is JSON, so the checks that would answer HTML are done inside: the method (405),
# login (401, not a redirect), CSRF (403; csrf_exempt only hands the check to us) and a
# database outage (503).
@login_not_required
@csrf_exempt
@never_cache
def portal_link(request: HttpRequest) -> JsonResponse:
    """``{"url": ...}`` for single-page and mobile apps (session auth, CSRF token required)."""
    if request.method != "POST":
        response = _json_error(405, "method_not_allowed", _("Use POST."))
        response["Allow"] = "POST"
        return response
    try:
        authenticated = request.user.is_authenticated
    except DatabaseError:
        return _json_unavailable(DEFAULT_RETRY_AFTER, database=True)
    if not authenticated:
        return _json_error(401, "not_authenticated", _("Please sign in first."))
    refused = _csrf_refusal(request)
    if refused is not None:
        return refused  # type: ignore[return-value]
    try:
        ratelimit.hit(request.user, "portal")
        with click_budget():
            link = mint_portal_link(request.user, next=_json_next(request))
    except NomosError as exc:
        return json_portal_error(exc, request.user)
    except DatabaseError:
        return json_database_outage()
    return JsonResponse({"url": link})


def json_portal_error(exc: NomosError, user: Any) -> JsonResponse:
    """The JSON answer to a failed link for ``user`` (logged here): 404 not linked, 429 rate
    limited, 503 outage (with Retry-After) or misconfiguration (without). Also used by
    ``drf.PortalLinkView``."""
    log_failure(exc, user)
    kind = exc.kind
    if kind in NOT_LINKED_KINDS:
        return _json_error(
            404, "not_linked", _("Your account is not linked to a customer account yet.")
        )
    if kind == "rate_limited":
        return _json_error(
            429,
            "rate_limited",
            _("Too many requests. Please wait a moment and try again."),
            **{"Retry-After": str(retry_after_of(exc))},
        )
    if is_operator_error(exc):
        return _json_error(
            503,
            "unavailable",
            _(
                "The customer portal is not available right now. This is a problem on our "
                "side; please try again later."
            ),
        )
    return _json_unavailable(retry_after_of(exc))


def json_database_outage() -> JsonResponse:
    """The JSON 503 when the database is down (logged here, with the traceback)."""
    return _json_unavailable(DEFAULT_RETRY_AFTER, database=True)


# -- the lead form -------------------------------------------------------------------------


def is_business_error(exc: NomosError) -> TypeGuard[NomosAPIError]:
    """A 400/422 with an ``errors`` list: Nomos refused the input, it is not down."""
    return exc.kind == "invalid"


@signed_in_page("GET", "POST")
def start(request: HttpRequest) -> HttpResponse:
    """The lead form: zip code and usage -> a pre-filled Nomos checkout for this user."""
    plan = nomos_settings.PLAN_ID
    if not plan:
        raise Http404("NOMOS_BILLING['PLAN_ID'] is not set")
    if get_customer(request.user) is not None:
        # Already a customer: the portal is where they manage their contract.
        return redirect("nomos_billing:portal")
    form = LeadForm(request.POST if request.method == "POST" else None)
    if request.method != "POST" or not form.is_valid():
        return page(request, START_TEMPLATE, {"form": form})
    payload = form.lead_payload(
        plan=plan, user=request.user, user_key=nomos_settings.METADATA_USER_KEY
    )
    try:
        ratelimit.hit(request.user, "signup")
        with click_budget():
            lead = get_client().create_lead(payload)
    except NomosError as exc:
        if is_business_error(exc):
            # Something the user can fix (e.g. unserviceable_zip): not an outage.
            logger.info(
                "Nomos refused the lead for user %s: %s",
                request.user.pk,
                ", ".join(f"{e.get('code', '-')} on {e.get('field', '-')}" for e in exc.errors),
            )
            form.add_nomos_errors(exc.errors)
            return page(request, START_TEMPLATE, {"form": form})
        if exc.kind == "rate_limited":
            # A per-user refusal, not an outage: Nomos is fine.
            return rate_limited_page(request, exc)
        log_failure(exc, request.user)
        if exc.kind == "outage":
            return lead_try_again_page(request, form, exc)
        return unavailable_page(request, exc)
    lead_id = lead.get("id") if isinstance(lead, dict) else None
    link = lead.get("link") if isinstance(lead, dict) else None
    if (
        not isinstance(lead_id, str)
        or not lead_id
        # Longer than any id Nomos sends: NomosLead.lead_id could not hold it.
        or len(lead_id) > 64
        or not isinstance(link, str)
        or not is_allowed_link(link)
    ):
        logger.error(
            "Nomos answered POST /leads without a usable id/link for user %s", request.user.pk
        )
        return unavailable_page(request, NomosError("invalid lead response"))
    record_lead(lead_id, request.user, plan)
    return HttpResponseSeeOther(link)
