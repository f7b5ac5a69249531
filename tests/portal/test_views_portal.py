"""The portal views through Django's test client against a live sandbox: login, redirects and
their status codes, no-store, fresh links per click, deep links (and hostile ones), the friendly
and the 503 pages, the JSON endpoint, query and connection budgets."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.test import Client
from django.utils.http import parse_http_date

from nomos_billing.models import NomosCustomer
from nomos_billing.sandbox import Fault, seed
from tests.portal.test_deeplinks import HOSTILE

pytestmark = pytest.mark.django_db

PORTAL = "/nomos/portal/"
PORTAL_LINK = "/nomos/portal/link/"
CSRF = "A" * 32  # an unmasked CSRF secret, accepted as cookie and as form token
PAYLOADS = (
    Path(__file__).resolve().parents[3] / "shared" / "security" / "open-redirect-payloads.txt"
)


def _payloads() -> list[Any]:
    if not PAYLOADS.exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{PAYLOADS} not found"))]
    values = PAYLOADS.read_text(encoding="utf-8").split("\n")
    if values and values[-1] == "":
        values.pop()
    return [pytest.param(v, id=f"payload{i:03d}") for i, v in enumerate(values)]


@pytest.fixture
def as_alice(client: Client, alice: Any) -> Client:
    client.force_login(alice)
    return client


@pytest.fixture
def as_bob(client: Client, bob: Any) -> Client:
    client.force_login(bob)
    return client


def csrf_client(user: Any | None) -> Client:
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    client.cookies["csrftoken"] = CSRF
    return client


def location(response: Any) -> tuple[str, dict[str, list[str]]]:
    parts = urlsplit(response["Location"])
    return parts.netloc, parse_qs(parts.query, keep_blank_values=True)


def assert_no_token(nomos: Any, response: Any) -> None:
    body = response.content.decode()
    for token in nomos.issued_tokens():
        assert token not in body
    assert "sandbox-secret" not in body
    assert "Traceback" not in body


# -- login ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "post"])
def test_anonymous_is_sent_to_login_with_next_back(client: Client, nomos: Any, method: str) -> None:
    response = getattr(client, method)(PORTAL + "?next=/invoices")

    assert response.status_code == 302
    parts = urlsplit(response["Location"])
    assert parts.path == "/accounts/login/"
    assert parse_qs(parts.query)["next"] == [PORTAL + "?next=/invoices"]
    assert nomos.calls == {}


# -- the redirect --------------------------------------------------------------------------


def test_linked_user_get_redirects_302_to_a_fresh_no_store_link(
    as_alice: Client, nomos: Any
) -> None:
    response = as_alice.get(PORTAL)

    assert response.status_code == 302
    assert response["Location"].startswith(nomos.portal_origin + "/auth/confirm?")
    directives = {d.strip() for d in response["Cache-Control"].split(",")}
    assert {"no-store", "no-cache", "private", "max-age=0"} <= directives
    assert parse_http_date(response["Expires"]) <= time.time()  # already stale for any cache
    assert_no_token(nomos, response)


def test_button_post_redirects_303_with_csrf_token(alice: Any, nomos: Any) -> None:
    client = csrf_client(alice)
    response = client.post(PORTAL, {"csrfmiddlewaretoken": CSRF, "next": "/invoices/inv_abc"})

    assert response.status_code == 303
    assert "no-store" in response["Cache-Control"]
    host, params = location(response)
    assert host == urlsplit(nomos.portal_origin).netloc
    assert params["next"] == ["/invoices/inv_abc"]


def test_button_post_without_csrf_token_is_refused_and_mints_nothing(
    alice: Any, nomos: Any
) -> None:
    response = csrf_client(alice).post(PORTAL, {"next": "/invoices"})
    assert response.status_code == 403
    assert b"CSRF verification failed" in response.content  # Django's own page
    assert "no-store" in response["Cache-Control"]  # like every answer of this view
    assert nomos.count("POST /admin/magic_link") == 0


@pytest.mark.parametrize("method", ["put", "delete", "patch"])
def test_other_methods_are_not_allowed(as_alice: Client, nomos: Any, method: str) -> None:
    assert getattr(as_alice, method)(PORTAL).status_code == 405
    assert nomos.count("POST /admin/magic_link") == 0


def test_two_clicks_mint_two_links_each_accepted_once_by_the_portal(
    as_alice: Client, nomos: Any
) -> None:
    first = as_alice.get(PORTAL)["Location"]
    second = as_alice.get(PORTAL)["Location"]

    assert first != second
    assert nomos.count("POST /admin/magic_link") == 2
    for link in (first, second):
        assert requests.get(link, timeout=5).status_code == 200
        assert requests.get(link, timeout=5).status_code == 403
    assert [s["customer_id"] for s in nomos.portal_sessions] == [seed.ALICE, seed.ALICE]


def test_customer_id_in_the_request_is_ignored(alice: Any, nomos: Any) -> None:
    client = csrf_client(alice)
    response = client.post(
        PORTAL + f"?customerId={seed.ACME}",
        {"csrfmiddlewaretoken": CSRF, "customerId": seed.ACME, "customer_id": seed.ACME},
    )
    assert requests.get(response["Location"], timeout=5).status_code == 200
    assert list(nomos.portal_sessions) == [{"customer_id": seed.ALICE, "next": "/overview"}]


# -- deep links ----------------------------------------------------------------------------


def test_safe_deep_link_reaches_the_portal(as_alice: Client, nomos: Any) -> None:
    response = as_alice.get(PORTAL, {"next": "/invoices/inv_abc"})

    host, params = location(response)
    assert host == urlsplit(nomos.portal_origin).netloc
    assert params["next"] == ["/invoices/inv_abc"]
    assert requests.get(response["Location"], timeout=5).status_code == 200
    assert list(nomos.portal_sessions) == [{"customer_id": seed.ALICE, "next": "/invoices/inv_abc"}]


@pytest.mark.parametrize("hostile", HOSTILE)
@pytest.mark.parametrize("method", ["get", "post"])
def test_own_hostile_next_is_dropped_and_the_host_is_unchanged(
    as_alice: Client, nomos: Any, hostile: str, method: str
) -> None:
    response = getattr(as_alice, method)(PORTAL, {"next": hostile})

    assert response.status_code in (302, 303)
    host, params = location(response)
    assert host == urlsplit(nomos.portal_origin).netloc
    assert params["next"] == ["/overview"]


@pytest.mark.parametrize("payload", _payloads())
def test_published_open_redirect_payload_is_dropped(
    as_alice: Client, nomos: Any, payload: str
) -> None:
    response = as_alice.get(PORTAL, {"next": payload})

    assert response.status_code == 302
    host, params = location(response)
    assert host == urlsplit(nomos.portal_origin).netloc
    assert params["next"] == ["/overview"]


# -- no customer ---------------------------------------------------------------------------


def test_unlinked_user_sees_the_friendly_page_and_nomos_is_not_called(
    as_bob: Client, nomos: Any
) -> None:
    response = as_bob.get(PORTAL)

    assert response.status_code == 200
    assert [t.name for t in response.templates][0] == "nomos_billing/no_customer.html"
    assert b"No electricity contract yet" in response.content
    assert "no-store" in response["Cache-Control"]
    assert nomos.calls == {}


def test_unlinked_user_is_offered_the_sites_signup_url(
    as_bob: Client, nomos: Any, settings: Any
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "SIGNUP_URL": "/signup/electricity/"}
    response = as_bob.get(PORTAL)
    assert b'href="/signup/electricity/"' in response.content
    assert b"/nomos/portal/start/" not in response.content


def test_unlinked_user_is_offered_the_lead_form_when_a_plan_is_set(
    as_bob: Client, nomos: Any, settings: Any
) -> None:
    settings.NOMOS_BILLING = {
        **settings.NOMOS_BILLING,
        "PLAN_ID": "pln_sandbox_home",
        "SIGNUP_URL": "/signup/",
    }
    response = as_bob.get(PORTAL)
    assert b'action="/nomos/portal/start/"' in response.content
    assert b'name="zip_code"' in response.content and b'name="estimated_usage"' in response.content
    assert b'href="/signup/"' not in response.content
    assert nomos.calls == {}


def test_customer_unknown_at_nomos_shows_the_friendly_page_and_logs_the_request_id(
    client: Client, django_user_model: Any, nomos: Any, caplog: pytest.LogCaptureFixture
) -> None:
    user = django_user_model.objects.create_user("gone", "gone@example.com", "pw")
    NomosCustomer.objects.create(user=user, customer_id="cus_deleted_at_nomos")
    client.force_login(user)
    caplog.set_level(logging.INFO)

    response = client.get(PORTAL)

    assert response.status_code == 200
    assert b"No electricity contract yet" in response.content
    request_id = nomos.request_log[-1]["request_id"]
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and r.name == "nomos_billing.views"
    ]
    assert len(errors) == 1 and request_id in errors[0] and "cus_deleted_at_nomos" in errors[0]
    assert_no_token(nomos, response)


# -- Nomos failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "retry_after", "posts", "waits"),
    [
        # Minting is retried after any 5xx, 3 times here: a second single-use link is
        # harmless (the first, never handed out, expires unused).
        (Fault(status=500, retry_after=1), "1", 4, [1, 1, 1]),
        (Fault(status=502, retry_after=1), "1", 4, [1, 1, 1]),
        (Fault(status=429, retry_after=120), "120", 1, []),
        (Fault(status=503, retry_after=1), "1", 4, [1, 1, 1]),
        (Fault(drop_connection=True), "30", 1, []),
    ],
    ids=["500-retried", "502-retried", "429-long-retry-after", "503-retried",
         "dropped-connection"],
)
def test_outage_shows_the_503_page_with_retry_after(
    as_alice: Client, nomos: Any, retry_sleeps: list[float], fault: Fault, retry_after: str,
    posts: int, waits: list[float],
) -> None:
    nomos.add_fault("POST /admin/magic_link", fault, times=None)

    response = as_alice.get(PORTAL)

    assert response.status_code == 503
    assert response["Retry-After"] == retry_after
    assert [t.name for t in response.templates][0] == "nomos_billing/unavailable.html"
    assert b"not available right now" in response.content
    assert "no-store" in response["Cache-Control"]
    assert nomos.count("POST /admin/magic_link") == posts
    assert retry_sleeps == waits
    assert_no_token(nomos, response)


def test_timeout_shows_the_503_page_within_the_read_timeout(
    as_alice: Client, nomos: Any, settings: Any
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TIMEOUT": (1.0, 0.3)}
    nomos.add_fault("POST /admin/magic_link", Fault(hang=2), times=None)

    response = as_alice.get(PORTAL)

    assert response.status_code == 503
    assert response["Retry-After"] == "30"
    assert_no_token(nomos, response)


def _nomos_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and r.name.startswith("nomos_billing")]


@pytest.mark.parametrize(("key", "status"), [
    ("POST /oauth/token", 401),       # a wrong client secret
    ("POST /oauth/token", 403),       # a disabled client
    ("POST /admin/magic_link", 403),  # credentials without the write:* scope
])
def test_refused_credentials_are_an_operator_error_not_a_passing_outage(
    as_alice: Client, nomos: Any, caplog: pytest.LogCaptureFixture, key: str, status: int
) -> None:
    nomos.add_fault(key, Fault(status=status), times=None)
    caplog.set_level(logging.INFO)

    first = as_alice.get(PORTAL)
    errors_after_first = _nomos_errors(caplog)
    second = as_alice.get(PORTAL)

    for response in (first, second):
        assert response.status_code == 503
        # Waiting does not fix a setting: no Retry-After, no "a few minutes".
        assert "Retry-After" not in response
        assert b"few minutes" not in response.content
        assert b"problem on our side" in response.content
        assert_no_token(nomos, response)
    assert len(errors_after_first) == 1, errors_after_first
    assert "CLIENT_ID" in errors_after_first[0] and "CLIENT_SECRET" in errors_after_first[0]
    if key == "POST /oauth/token":
        # Once per cool-down, not once per click.
        assert _nomos_errors(caplog) == errors_after_first


def test_refused_credentials_page_in_german_promises_no_quick_recovery(
    as_alice: Client, nomos: Any
) -> None:
    nomos.add_fault("POST /oauth/token", Fault(status=401), times=None)
    response = as_alice.get(PORTAL, HTTP_ACCEPT_LANGUAGE="de")
    assert response.status_code == 503
    assert "Fehler auf unserer Seite" in response.content.decode()
    assert "Minuten" not in response.content.decode()


def test_no_nomos_billing_setting_at_all_names_the_setting(
    as_alice: Client, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Under gunicorn the system checks never run: the first click must say what is missing.
    del settings.NOMOS_BILLING
    caplog.set_level(logging.INFO)
    response = as_alice.get(PORTAL)
    assert response.status_code == 503
    assert "Retry-After" not in response
    [error] = _nomos_errors(caplog)
    assert "settings.NOMOS_BILLING is not set" in error
    assert "CLIENT_ID" in error and "CLIENT_SECRET" in error


def test_wrong_client_secret_shows_503_and_never_the_secret(
    as_alice: Client, nomos: Any, settings: Any
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "CLIENT_SECRET": "wrong-secret-value"}
    response = as_alice.get(PORTAL)
    assert response.status_code == 503
    assert b"wrong-secret-value" not in response.content
    assert nomos.count("POST /admin/magic_link") == 0


# -- budgets -------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_takeover_look")
def test_portal_view_costs_session_user_and_customer_queries(
    as_alice: Client, nomos: Any, django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(3):
        response = as_alice.get(PORTAL)
    assert response.status_code == 302


# A hundred clicks in a row: one token and one connection, not pacing.
@pytest.mark.sandbox_rate_limit(0)
def test_hundred_clicks_mint_hundred_links_with_one_token_and_one_connection(
    as_alice: Client, nomos: Any, settings: Any
) -> None:
    # A hundred clicks from one user is what RATE_LIMITS exists to stop (test_ratelimit.py).
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "RATE_LIMITS": {"portal": None}}
    before = nomos.connections
    links = {as_alice.get(PORTAL)["Location"] for _ in range(100)}

    assert len(links) == 100
    assert nomos.count("POST /admin/magic_link") == 100
    assert nomos.count("POST /oauth/token") <= 1
    assert nomos.connections - before <= 1


# -- JSON ----------------------------------------------------------------------------------


def post_json(client: Client, data: Any = None, **kwargs: Any) -> Any:
    return client.post(PORTAL_LINK, data or {"csrfmiddlewaretoken": CSRF}, **kwargs)


def test_json_endpoint_returns_a_fresh_url_no_store(alice: Any, nomos: Any) -> None:
    client = csrf_client(alice)
    first = post_json(client)
    second = post_json(client)

    assert first.status_code == 200
    assert first["Content-Type"] == "application/json"
    assert "no-store" in first["Cache-Control"]
    url = first.json()["url"]
    assert url.startswith(nomos.portal_origin + "/auth/confirm?")
    assert url != second.json()["url"]
    assert requests.get(url, timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"data": {"csrfmiddlewaretoken": CSRF, "next": "/invoices/inv_abc"}}, "/invoices/inv_abc"),
        (
            {
                "data": json.dumps({"next": "/invoices/inv_abc"}),
                "content_type": "application/json",
                "headers": {"X-CSRFToken": CSRF},
            },
            "/invoices/inv_abc",
        ),
        (
            {
                "data": json.dumps({"next": "//evil.com"}),
                "content_type": "application/json",
                "headers": {"X-CSRFToken": CSRF},
            },
            "/overview",
        ),
        (
            {
                "data": "not json",
                "content_type": "application/json",
                "headers": {"X-CSRFToken": CSRF},
            },
            "/overview",
        ),
        ({"data": {"csrfmiddlewaretoken": CSRF, "next": "https://evil.com"}}, "/overview"),
    ],
    ids=["form", "json", "json-hostile", "json-malformed", "form-hostile"],
)
def test_json_endpoint_deep_link(
    alice: Any, nomos: Any, kwargs: dict[str, Any], expected: str
) -> None:
    response = csrf_client(alice).post(PORTAL_LINK, **kwargs)
    assert response.status_code == 200
    parts = urlsplit(response.json()["url"])
    assert parts.netloc == urlsplit(nomos.portal_origin).netloc
    assert parse_qs(parts.query)["next"] == [expected]


def test_json_endpoint_refuses_get_with_405(as_alice: Client, nomos: Any) -> None:
    assert as_alice.get(PORTAL_LINK).status_code == 405
    assert nomos.calls == {}


def test_json_endpoint_without_csrf_token_is_403(alice: Any, nomos: Any) -> None:
    response = csrf_client(alice).post(PORTAL_LINK, {})
    assert response.status_code == 403
    assert "no-store" in response["Cache-Control"]
    assert nomos.calls == {}


def test_json_endpoint_anonymous_is_401_json_not_a_redirect(nomos: Any) -> None:
    response = post_json(csrf_client(None))
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert "Location" not in response
    assert nomos.calls == {}


def test_json_endpoint_unlinked_user_is_404_not_linked(bob: Any, nomos: Any) -> None:
    response = post_json(csrf_client(bob))
    assert response.status_code == 404
    assert response.json()["code"] == "not_linked"
    assert response.json()["error"]
    assert nomos.calls == {}


@pytest.mark.parametrize(
    ("fault", "retry_after"),
    [
        (Fault(status=500), "30"),
        (Fault(status=429, retry_after=90), "90"),
        (Fault(status=401), None),  # refused even with a new token: the operator's to fix
    ],
    ids=["500", "429", "401"],
)
def test_json_endpoint_outage_is_503_unavailable_with_retry_after(
    alice: Any, nomos: Any, fault: Fault, retry_after: str | None
) -> None:
    nomos.add_fault("POST /admin/magic_link", fault, times=None)
    response = post_json(csrf_client(alice))
    assert response.status_code == 503
    assert response.get("Retry-After") == retry_after
    assert ("few minutes" in response.json()["error"]) == (retry_after is not None)
    if retry_after is None:
        # Not the user's to fix, nor a matter of waiting: said so, in full.
        assert response.json()["error"] == (
            "The customer portal is not available right now. This is a problem on our side; "
            "please try again later.")
    assert response.json()["code"] == "unavailable"
    assert "no-store" in response["Cache-Control"]
    assert_no_token(nomos, response)


@pytest.mark.django_db
def test_customer_without_subscription_is_redirected_to_the_checkout_not_503(
    client, django_user_model, nomos
) -> None:
    # Nomos mints a checkout link for a customer without a subscription (the sandbox too).
    carol = django_user_model.objects.create_user("carol", "carol@example.com", "pw")
    NomosCustomer.objects.create(user=carol, customer_id=seed.CAROL)
    client.force_login(carol)

    response = client.post("/nomos/portal/", {"next": "/invoices/inv_1"})

    assert response.status_code == 303
    location = response["Location"]
    assert location.startswith(f"{nomos.checkout_origin()}/?token_hash=")
    assert "next=" not in location
    page = requests.get(location, timeout=5)
    assert page.status_code == 200 and 'value="carol@example.com"' in page.text


@pytest.mark.parametrize("headers", [
    {"Sec-Purpose": "prefetch"},
    {"Sec-Purpose": "prefetch;prerender"},
    {"Sec-Purpose": "prefetch;anonymous-client-ip"},
    {"Purpose": "prefetch"},
    {"X-Moz": "prefetch"},
])
def test_a_prefetch_mints_nothing_and_is_not_cached(
    as_alice: Client, nomos: Any, headers: dict[str, str]
) -> None:
    response = as_alice.get(PORTAL + "?next=/invoices", headers=headers)

    assert response.status_code == 403  # non-2xx: the browser drops the prefetch
    assert "Location" not in response
    assert "no-store" in response["Cache-Control"]
    assert nomos.calls == {}  # no token, no magic link
    # The real click afterwards still mints exactly one link.
    click = as_alice.get(PORTAL + "?next=/invoices")
    assert click.status_code == 302
    assert nomos.count("POST /admin/magic_link") == 1
