"""The portal views: the button's redirect, the JSON endpoint for apps, and the lead form.

Every answer that carries a magic link is ``no-store``: the link is a single-use credential and
must not be cached by the browser or a proxy. Failures never become a 500: the user sees a
friendly page (not linked) or a 503 page (Nomos unavailable), the operator gets the log line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeGuard

from django.conf import settings
from django.contrib.auth.decorators import login_not_required, login_required
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import redirect, render, resolve_url
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.functional import Promise
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods

from . import api_rate, budget, confirmation, ratelimit
from .client import get_client
from .conf import nomos_settings
from .exceptions import (
    NomosAPIError,
    NomosConfigurationError,
    NomosError,
    NomosNotLinked,
    NomosUnavailable,
    RateLimited,
)
from .forms import LeadForm
from .models import NomosLead
from .portal import customer_id_of, get_customer, is_allowed_link, mint_portal_link

logger = logging.getLogger("nomos_billing.views")

#: Retry-After (seconds) of our 503 when Nomos did not say.
DEFAULT_RETRY_AFTER = 30
MAX_RETRY_AFTER = 3600

_UNAVAILABLE_TEXT = gettext_lazy(
    "The customer portal is not available right now. Please try again in a few minutes."
)

NO_CUSTOMER_TEMPLATE = "nomos_billing/no_customer.html"
UNAVAILABLE_TEMPLATE = "nomos_billing/unavailable.html"
START_TEMPLATE = "nomos_billing/start.html"
RATE_LIMITED_TEMPLATE = "nomos_billing/rate_limited.html"


# -- shared --------------------------------------------------------------------------------


def _retry_after(exc: BaseException) -> int:
    value = getattr(exc, "retry_after", None)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return min(value, MAX_RETRY_AFTER)
    return DEFAULT_RETRY_AFTER


def _customer_id(user: Any) -> str:
    # What the click already read (kept on the user object): no second query on its error path.
    return customer_id_of(user) or "-"


def _classify(exc: NomosError, user: Any) -> str:
    """Return "not_linked", "misconfigured" or "unavailable", after logging what the operator
    needs to know."""
    if isinstance(exc, NomosNotLinked):
        return "not_linked"
    if isinstance(exc, RateLimited):
        return "rate_limited"  # logged once per window by ratelimit
    if isinstance(exc, NomosConfigurationError):
        # Already logged at ERROR (once per cool-down) with the setting to fix, where raised.
        return "misconfigured"
    customer_id = _customer_id(user)
    if isinstance(exc, NomosAPIError) and exc.is_not_found:
        logger.error(
            "Nomos does not know customer %s (requestId %s); the user sees the not-linked page. "
            "Was the customer deleted at Nomos, or is the row from another account?",
            customer_id,
            exc.request_id or "-",
        )
        return "not_linked"
    if isinstance(exc, NomosUnavailable):
        logger.warning("Nomos unavailable for customer %s: %s", customer_id, type(exc).__name__)
    elif isinstance(exc, NomosAPIError) and exc.is_auth_failure:
        logger.error(
            "Nomos refused our credentials (HTTP %s %s, requestId %s): check "
            "NOMOS_BILLING['CLIENT_ID'] / ['CLIENT_SECRET'] and the client's write:* scope",
            exc.status,
            exc.code or "-",
            exc.request_id or "-",
        )
    elif isinstance(exc, NomosAPIError):
        logger.error(
            "Nomos call for customer %s failed: HTTP %s %s (requestId %s)",
            customer_id,
            exc.status,
            exc.code or "-",
            exc.request_id or "-",
        )
    else:
        logger.error(
            "nomos_billing cannot reach Nomos for customer %s: %s", customer_id, type(exc).__name__
        )
    return "unavailable"


@contextmanager
def click_budget() -> Iterator[None]:
    """The time budget of a click: the user sees the portal or the 503 page within it; its
    calls go first under Nomos' rate limit (``api_rate``)."""
    with budget.limit(nomos_settings.CLICK_BUDGET), api_rate.priority("click"):
        yield


def _signup_context(request: HttpRequest) -> dict[str, Any]:
    plan = nomos_settings.PLAN_ID
    return {
        "signup_url": nomos_settings.SIGNUP_URL or "",
        "start_url": reverse("nomos_billing:start") if plan else "",
        "form": LeadForm() if plan else None,
    }


#: Our pages' own layout when the site names no ``BASE_TEMPLATE``.
DEFAULT_LAYOUT = "nomos_billing/layout.html"


def home_url() -> str:
    """Where "back" leads: ``LOGIN_REDIRECT_URL`` when the site set it (Django's default,
    ``/accounts/profile/``, exists on few sites), else ``/``."""
    if settings.is_overridden("LOGIN_REDIRECT_URL"):  # type: ignore[misc]  # not in the stubs
        return resolve_url(settings.LOGIN_REDIRECT_URL)
    return "/"


def page(
    request: HttpRequest, template: str, context: dict[str, Any] | None = None, status: int = 200
) -> HttpResponse:
    """Render one of our pages inside the site's layout (``BASE_TEMPLATE``) or our own."""
    return render(
        request,
        template,
        {
            "nomos_billing_base_template": nomos_settings.BASE_TEMPLATE or DEFAULT_LAYOUT,
            "nomos_billing_home_url": home_url(),
            **(context or {}),
        },
        status=status,
    )


def no_customer_page(request: HttpRequest) -> HttpResponse:
    claim = confirmation.pending_claim(request.user)
    if claim is not None:
        # A contract waits for its mailbox's confirmation: no second sign-up to offer.
        context = {"held": confirmation.held_context(claim)}
    else:
        context = _signup_context(request)
    response = page(request, NO_CUSTOMER_TEMPLATE, context, status=200)
    add_never_cache_headers(response)
    return response


def is_operator_error(exc: BaseException) -> bool:
    """Settings only a person can fix: refused or missing credentials, a scope without write.

    Waiting does not help, so the page promises no quick recovery and sends no Retry-After.
    """
    if isinstance(exc, NomosConfigurationError):
        return True
    return isinstance(exc, NomosAPIError) and exc.is_auth_failure


def lead_try_again_page(request: HttpRequest, form: LeadForm, exc: BaseException) -> HttpResponse:
    """The lead form again, as typed, with "try again": Nomos failed or did not answer. The
    lead was sent once (the client never repeats a ``POST /leads`` Nomos may have acted on),
    so sending the form again is the user's choice, not a retry behind their back."""
    form.add_try_again()
    retry_after = _retry_after(exc)
    response = page(request, START_TEMPLATE, {"form": form}, status=503)
    response["Retry-After"] = str(retry_after)
    return response


def unavailable_page(request: HttpRequest, exc: BaseException) -> HttpResponse:
    if isinstance(exc, RateLimited):
        return rate_limited_page(request, exc)
    if is_operator_error(exc):
        response = page(request, UNAVAILABLE_TEMPLATE, {"misconfigured": True}, status=503)
    else:
        retry_after = _retry_after(exc)
        response = page(request, UNAVAILABLE_TEMPLATE, {"retry_after": retry_after}, status=503)
        response["Retry-After"] = str(retry_after)
    add_never_cache_headers(response)
    return response


def rate_limited_page(request: HttpRequest, exc: RateLimited) -> HttpResponse:
    """429: this user made too many requests of one kind in a short time; nothing reached Nomos."""
    retry_after = _retry_after(exc)
    context = {"retry_after": retry_after, "retry_minutes": -(-retry_after // 60)}
    response = page(request, RATE_LIMITED_TEMPLATE, context, status=429)
    response["Retry-After"] = str(retry_after)
    add_never_cache_headers(response)
    return response


#: What ``never_cache`` writes. A click's answer is a single-use credential (or the page in its
#: place), which no browser or proxy may keep.
NEVER_CACHE = "max-age=0, no-cache, no-store, must-revalidate, private"


def never_cached(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Django's ``never_cache`` for the click views, with the headers written at once instead of
    parsed and patched: a tenth of its cost on the path measured against one HTTP call.
    ``Expires: 0`` is the past for every cache (RFC 9111, 5.3)."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response["Cache-Control"] = NEVER_CACHE
        response["Expires"] = "0"
        return response

    return wrapper


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


# -- the button ----------------------------------------------------------------------------


def database_outage_page(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The 503 page instead of a 500 when the database is down (the session, the user or the
    customer row cannot be read): for the user it is the same outage as Nomos being down."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except DatabaseError:
            logger.exception("%s: the database is unavailable", request.path)
            try:
                return unavailable_page(request, NomosError("database unavailable"))
            except DatabaseError:
                # The page itself needed the database (a context processor, the site's base
                # template): answer plain text rather than a 500.
                response = HttpResponse(
                    _UNAVAILABLE_TEXT, status=503, content_type="text/plain; charset=utf-8"
                )
                response["Retry-After"] = str(DEFAULT_RETRY_AFTER)
                add_never_cache_headers(response)
                return response

    return wrapper


def signed_in_page(*methods: str) -> Callable[[Callable[..., HttpResponse]], Any]:
    """The guards of every signed-in page of ours (the button's view, the sign-up form, the
    held link's confirmation and "send again"), in one order so that none is left out:

    the 503 page for a database outage; no-store on every answer, Django's CSRF 403 included
    (``csrf_exempt`` only hands the middleware's check to ``csrf_protect`` inside); the allowed
    methods; CSRF; login.
    """

    def decorate(view: Callable[..., HttpResponse]) -> Any:
        guarded = login_required(view)
        guarded = csrf_protect(guarded)
        guarded = require_http_methods(list(methods))(guarded)
        guarded = never_cached(guarded)
        guarded = csrf_exempt(guarded)
        return database_outage_page(guarded)

    return decorate


@signed_in_page("GET", "POST")
def portal(request: HttpRequest) -> HttpResponse:
    """Mint a fresh link and redirect to it: 303 after the button's POST, 302 for a GET link."""
    if request.method == "GET" and is_prefetch(request):
        # A hover or a speculation rule is not a click: minting would spend an API call and a
        # single-use link the user never sees. Any non-2xx makes the browser drop the
        # prefetch and load the page for real on the click; never_cached keeps it uncached.
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
        if _classify(exc, request.user) == "not_linked":
            return no_customer_page(request)
        return unavailable_page(request, exc)
    response = HttpResponseRedirect(link)
    if request.method == "POST":
        response.status_code = 303
    return response


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
    return _json_error(503, "unavailable", _UNAVAILABLE_TEXT, **{"Retry-After": str(retry_after)})


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
@never_cached
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
    kind = _classify(exc, user)
    if kind == "not_linked":
        return _json_error(
            404, "not_linked", _("Your account is not linked to a customer account yet.")
        )
    if kind == "rate_limited":
        return _json_error(
            429,
            "rate_limited",
            _("Too many requests. Please wait a moment and try again."),
            **{"Retry-After": str(_retry_after(exc))},
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
    return _json_unavailable(_retry_after(exc))


def json_database_outage() -> JsonResponse:
    """The JSON 503 when the database is down (logged here, with the traceback)."""
    return _json_unavailable(DEFAULT_RETRY_AFTER, database=True)


# -- the lead form -------------------------------------------------------------------------


def is_business_error(exc: BaseException) -> TypeGuard[NomosAPIError]:
    """A 400/422 with an ``errors`` list: Nomos refused the input, it is not down."""
    return (
        isinstance(exc, NomosAPIError)
        and not isinstance(exc, NomosUnavailable)
        and exc.status in (400, 422)
        and bool(exc.errors)
    )


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
        if isinstance(exc, RateLimited):
            # Before the outage branch: RateLimited is a NomosUnavailable, but Nomos is fine.
            return rate_limited_page(request, exc)
        _classify(exc, request.user)
        # A per-user refusal (RateLimited is a NomosUnavailable) is the 429 page, not an outage.
        if (
            isinstance(exc, NomosUnavailable)
            and not isinstance(exc, RateLimited)
            and not is_operator_error(exc)
        ):
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
    NomosLead.objects.create(lead_id=lead_id, user=request.user, plan=plan)
    logger.info("lead %s created for user %s", lead_id, request.user.pk)
    response = HttpResponseRedirect(link)
    response.status_code = 303
    return response
