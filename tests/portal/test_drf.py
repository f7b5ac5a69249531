"""``nomos_billing.drf.PortalLinkView`` under DRF's token authentication, against a live sandbox.

A native app sends ``Authorization: Token ...`` (no session, no CSRF token) and gets a link the
sandbox portal accepts once, made by exactly one magic-link request; anonymous and wrong-token
requests, a user the site's own permission classes refuse, and requests over the per-user limit
reach Nomos not at all. This module is the URLconf of its tests.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
from django.test import Client
from django.urls import path

from nomos_billing.sandbox.faults import Fault

pytest.importorskip("rest_framework", reason="djangorestframework is not installed")

from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.permissions import IsAdminUser

from nomos_billing.drf import PortalLinkView

urlpatterns = [
    path("api/portal-link/", PortalLinkView.as_view(authentication_classes=[TokenAuthentication])),
    path(
        "api/staff-portal-link/",
        PortalLinkView.as_view(
            authentication_classes=[TokenAuthentication], permission_classes=[IsAdminUser]
        ),
    ),
    # DRF's own defaults (session and basic authentication, AllowAny).
    path("api/default-portal-link/", PortalLinkView.as_view()),
]

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

URL = "/api/portal-link/"
MAGIC = "POST /admin/magic_link"


def app(user: Any | None = None, token: str | None = None) -> Client:
    """A native app: a token header, CSRF enforced as for any browser, no session cookie."""
    if token is None and user is not None:
        token = Token.objects.create(user=user).key
    headers = {"Authorization": f"Token {token}"} if token else {}
    return Client(enforce_csrf_checks=True, headers=headers)


def test_a_token_post_answers_a_link_made_by_one_magic_link_request(alice, nomos):
    response = app(alice).post(URL, {"next": "/invoices"}, content_type="application/json")

    assert response.status_code == 200, response.content
    url = response.json()["url"]
    assert nomos.count(MAGIC) == 1
    assert "no-store" in response["Cache-Control"]
    assert "sessionid" not in response.cookies
    assert requests.get(url, timeout=5).status_code == 200
    assert requests.get(url, timeout=5).status_code == 403  # single use


@pytest.mark.parametrize("token", [None, "0" * 40], ids=["anonymous", "wrong-token"])
def test_without_a_valid_token_nothing_reaches_nomos(alice, nomos, token):
    response = app(token=token).post(URL)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert "url" not in response.json()
    assert nomos.calls == {}


def test_anonymous_under_drfs_defaults_is_refused_although_they_allow_anyone(nomos):
    # DRF's default permission is AllowAny; a link is still only made for a signed-in user.
    response = Client().post("/api/default-portal-link/")
    assert response.status_code in (401, 403)
    assert nomos.calls == {}


def test_the_sites_own_permission_classes_apply(alice, nomos):
    response = app(alice).post("/api/staff-portal-link/")
    assert response.status_code == 403
    assert nomos.calls == {}


def test_over_the_per_user_limit_is_429_with_retry_after(alice, nomos, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "RATE_LIMITS": {"portal": (3, 60)}}
    client = app(alice)

    statuses = [client.post(URL).status_code for _ in range(5)]

    assert statuses == [200, 200, 200, 429, 429]
    refused = client.post(URL)
    assert refused.status_code == 429
    # A sliding window of 60 s: the wait is at most two windows.
    assert 1 <= int(refused["Retry-After"]) <= 120
    assert refused.json()["code"] == "rate_limited"
    assert nomos.count(MAGIC) == 3


def test_a_user_without_a_customer_gets_404_not_linked(django_user_model, nomos):
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "pw")
    response = app(bob).post(URL)
    assert response.status_code == 404
    assert response.json()["code"] == "not_linked"
    assert nomos.count(MAGIC) == 0


def test_an_outage_is_503_with_retry_after(alice, nomos, retry_sleeps):
    nomos.add_fault(MAGIC, Fault(status=503, retry_after=7), times=None)
    response = app(alice).post(URL)
    assert response.status_code == 503
    assert response.json()["code"] == "unavailable"
    assert response["Retry-After"].isdigit()
    assert "no-store" in response["Cache-Control"]


def test_refused_credentials_are_503_without_retry_after(alice, nomos, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "CLIENT_SECRET": "not-the-secret"}
    response = app(alice).post(URL)
    assert response.status_code == 503
    assert response.json()["code"] == "unavailable"
    assert not response.has_header("Retry-After")
    assert "not-the-secret" not in response.content.decode()


def test_get_is_not_allowed_and_mints_nothing(alice, nomos):
    response = app(alice).get(URL)
    assert response.status_code == 405
    assert nomos.count(MAGIC) == 0
