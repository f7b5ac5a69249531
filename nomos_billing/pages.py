"""Our pages, and what a failure shows: the layout they render in, the guards of every
signed-in page, and the answer to each kind of failure (``NomosError.kind``).

Failures never become a 500: the user sees a friendly page (not linked), a 429 (too many
requests) or a 503 page (Nomos or our database unavailable; misconfigured), the operator gets
the log line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render, resolve_url
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.translation import gettext_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods

from . import api_rate, budget, confirmation
from .conf import nomos_settings
from .exceptions import NomosAPIError, NomosError
from .forms import LeadForm
from .portal import customer_id_of

#: The views' logger, which operators filter on, for the failures of every view of ours.
logger = logging.getLogger("nomos_billing.views")

#: Retry-After (seconds) of our 503 when Nomos did not say.
DEFAULT_RETRY_AFTER = 30
MAX_RETRY_AFTER = 3600

UNAVAILABLE_TEXT = gettext_lazy(
    "The customer portal is not available right now. Please try again in a few minutes."
)

NO_CUSTOMER_TEMPLATE = "nomos_billing/no_customer.html"
UNAVAILABLE_TEMPLATE = "nomos_billing/unavailable.html"
START_TEMPLATE = "nomos_billing/start.html"
RATE_LIMITED_TEMPLATE = "nomos_billing/rate_limited.html"


# -- failures ------------------------------------------------------------------------------


def retry_after_of(exc: BaseException) -> int:
    value = getattr(exc, "retry_after", None)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return min(value, MAX_RETRY_AFTER)
    return DEFAULT_RETRY_AFTER


def _customer_id(user: Any) -> str:
    # What the click already read (kept on the user object): no second query on its error path.
    return customer_id_of(user) or "-"


#: The kinds of failure whose answer is "not linked" (Nomos no longer knows the customer of
#: our row, too), and those only a person can fix (no quick recovery promised, no Retry-After).
NOT_LINKED_KINDS = frozenset({"not_linked", "not_found"})
OPERATOR_KINDS = frozenset({"misconfigured", "refused"})


def log_failure(exc: NomosError, user: Any) -> None:
    """Log what the operator needs to know of a failed click or lead for ``user``."""
    kind = exc.kind
    if kind in ("not_linked", "rate_limited") or exc.reported:
        # Nothing for the operator, logged once per window by ratelimit, or already logged at
        # ERROR (once per cool-down) with the setting to fix, where raised.
        return
    customer_id = _customer_id(user)
    if kind == "not_found":
        logger.error(
            "Nomos does not know customer %s (requestId %s); the user sees the not-linked page. "
            "Was the customer deleted at Nomos, or is the row from another account?",
            customer_id,
            getattr(exc, "request_id", "") or "-",
        )
    elif kind == "outage":
        logger.warning("Nomos unavailable for customer %s: %s", customer_id, type(exc).__name__)
    elif isinstance(exc, NomosAPIError) and kind == "refused":
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


@contextmanager
def click_budget() -> Iterator[None]:
    """The time budget of a click: the user sees the portal or the 503 page within it; its
    calls go first under Nomos' rate limit (``api_rate``)."""
    with budget.limit(nomos_settings.CLICK_BUDGET), api_rate.priority("click"):
        yield


def _signup_context() -> dict[str, Any]:
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
        context = _signup_context()
    response = page(request, NO_CUSTOMER_TEMPLATE, context, status=200)
    add_never_cache_headers(response)
    return response


def is_operator_error(exc: NomosError) -> bool:
    """Settings only a person can fix: refused or missing credentials, a scope without write.

    Waiting does not help, so the page promises no quick recovery and sends no Retry-After.
    """
    return exc.kind in OPERATOR_KINDS


def lead_try_again_page(request: HttpRequest, form: LeadForm, exc: BaseException) -> HttpResponse:
    """The lead form again, as typed, with "try again": Nomos failed or did not answer. The
    lead was sent once (the client never repeats a ``POST /leads`` Nomos may have acted on),
    so sending the form again is the user's choice, not a retry behind their back."""
    form.add_try_again()
    retry_after = retry_after_of(exc)
    response = page(request, START_TEMPLATE, {"form": form}, status=503)
    response["Retry-After"] = str(retry_after)
    return response


def unavailable_page(request: HttpRequest, exc: NomosError) -> HttpResponse:
    if exc.kind == "rate_limited":
        return rate_limited_page(request, exc)
    if is_operator_error(exc):
        response = page(request, UNAVAILABLE_TEMPLATE, {"misconfigured": True}, status=503)
    else:
        retry_after = retry_after_of(exc)
        response = page(request, UNAVAILABLE_TEMPLATE, {"retry_after": retry_after}, status=503)
        response["Retry-After"] = str(retry_after)
    add_never_cache_headers(response)
    return response


def rate_limited_page(request: HttpRequest, exc: NomosError) -> HttpResponse:
    """429: this user made too many requests of one kind in a short time; nothing reached Nomos."""
    retry_after = retry_after_of(exc)
    context = {"retry_after": retry_after, "retry_minutes": -(-retry_after // 60)}
    response = page(request, RATE_LIMITED_TEMPLATE, context, status=429)
    response["Retry-After"] = str(retry_after)
    add_never_cache_headers(response)
    return response


# -- the guards of a signed-in page -----------------------------------------------------


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
                    UNAVAILABLE_TEXT, status=503, content_type="text/plain; charset=utf-8"
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
        guarded = never_cache(guarded)
        guarded = csrf_exempt(guarded)
        return database_outage_page(guarded)

    return decorate
