"""The pages of a held link (``confirmation.py``): the link from the customer's mail, and the
button's "send again".

Following the mailed link (GET) only asks: mail scanners and link previews open links, and an
opened link must not grant anything. The confirmation is the signed-in user's POST. Every
refusal is a plain page that says nothing was connected; none is a 500.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from . import confirmation
from .pages import click_budget, page, signed_in_page

CONFIRM_TEMPLATE = "nomos_billing/link_confirm.html"
HELD_TEMPLATE = "nomos_billing/link_held.html"

#: The answer's status for each way a confirmation can end.
STATUS = {
    "ask": 200,
    "linked": 200,
    "invalid": 400,
    "wrong_user": 403,
    "taken": 409,
    "expired": 410,
    "used": 410,
}


def _confirm_page(request: HttpRequest, state: str, **context: object) -> HttpResponse:
    return page(request, CONFIRM_TEMPLATE, {"state": state, **context}, status=STATUS[state])


@signed_in_page("GET", "POST")
def link_confirm(request: HttpRequest) -> HttpResponse:
    token = request.GET.get("t", "")
    claim, problem = confirmation.read_token(token) if token else (None, "invalid")
    if claim is None:
        return _confirm_page(request, problem or "invalid")
    if claim.user_id != request.user.pk:
        return _confirm_page(request, confirmation.confirm_by_mailbox(claim, request.user))
    if request.method == "GET":
        return _confirm_page(request, "ask", account=confirmation.account_label(request.user))
    outcome = confirmation.confirm_by_mailbox(claim, request.user)
    return _confirm_page(request, outcome, portal_url=reverse("nomos_billing:portal"))


@signed_in_page("POST")
def link_resend(request: HttpRequest) -> HttpResponse:
    claim = confirmation.pending_claim(request.user)
    if claim is None:
        return page(request, HELD_TEMPLATE, {"state": "none"}, status=404)
    base = confirmation.site_url() or request.build_absolute_uri("/").rstrip("/")
    # A click: a mail server that does not answer costs CLICK_BUDGET, then "failed".
    with click_budget():
        sent, retry_after = confirmation.resend(claim, base_url=base)
    if sent:
        state, status = "sent", 200
    elif retry_after:
        state, status = "wait", 429
    elif claim.sends >= confirmation.MAX_SENDS:
        state, status = "exhausted", 429
    else:
        state, status = "failed", 503
    response = page(
        request,
        HELD_TEMPLATE,
        {
            "state": state,
            "held": confirmation.held_context(claim),
        },
        status=status,
    )
    if retry_after:
        response["Retry-After"] = str(retry_after)
    return response
