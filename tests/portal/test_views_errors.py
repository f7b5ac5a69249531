"""The portal endpoints answer every failure in their own form: the JSON endpoint always in
JSON (anonymous, CSRF, wrong method, outage), and a database outage as the 503 page, never
Django's HTML error pages or a 500."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from django.db import OperationalError
from django.db.backends.utils import CursorWrapper
from django.test import Client

from nomos_billing.exceptions import NomosAPIError
from nomos_billing.pages import log_failure
from nomos_billing.sandbox import seed

PORTAL = "/nomos/portal/"
PORTAL_LINK = "/nomos/portal/link/"
CSRF = "a" * 32

pytestmark = pytest.mark.django_db


def csrf_client(user: Any | None, *, cookie: bool = True) -> Client:
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    if cookie:
        client.cookies["csrftoken"] = CSRF
    return client


def database_down() -> Any:
    return mock.patch.object(
        CursorWrapper, "execute", side_effect=OperationalError("server closed the connection")
    )


@pytest.mark.parametrize("cookie", [True, False], ids=["token-missing", "no-cookie-either"])
def test_json_endpoint_csrf_failure_is_403_json(alice, nomos, cookie):
    response = csrf_client(alice, cookie=cookie).post(PORTAL_LINK, {})
    assert response.status_code == 403
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "csrf_failed"
    assert nomos.count("POST /admin/magic_link") == 0


def test_json_endpoint_anonymous_without_csrf_token_is_401_json(nomos):
    response = csrf_client(None, cookie=False).post(PORTAL_LINK, {})
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_json_endpoint_with_csrf_token_still_mints(alice, nomos):
    response = csrf_client(alice).post(PORTAL_LINK, {"csrfmiddlewaretoken": CSRF})
    assert response.status_code == 200
    assert response.json()["url"].startswith(nomos.portal_origin)


def test_json_endpoint_get_is_405_json(alice, nomos):
    client = Client()
    client.force_login(alice)
    response = client.get(PORTAL_LINK)
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert response.json()["code"] == "method_not_allowed"


def test_json_endpoint_during_a_nomos_outage_is_503_json(alice, nomos):
    from nomos_billing.sandbox import Fault

    nomos.add_fault("POST /admin/magic_link", Fault(status=500), times=None)
    response = csrf_client(alice).post(PORTAL_LINK, {"csrfmiddlewaretoken": CSRF})
    assert response.status_code == 503
    assert response.json()["code"] == "unavailable"


def test_portal_during_a_database_outage_is_the_503_page(alice, nomos):
    client = Client()
    client.force_login(alice)
    with database_down():
        response = client.get(PORTAL)
    assert response.status_code == 503
    assert response["Retry-After"] == "30"
    assert b"not available right now" in response.content
    assert nomos.count("POST /admin/magic_link") == 0


def test_json_endpoint_during_a_database_outage_is_503_json(alice, nomos):
    client = csrf_client(alice)
    with database_down():
        response = client.post(PORTAL_LINK, {"csrfmiddlewaretoken": CSRF})
    assert response.status_code == 503
    assert response.json()["code"] == "unavailable"


@pytest.mark.parametrize(("status", "says"), [
    (404, "Nomos does not know customer cus_sandbox_alice (requestId req_"),
    (403, "Nomos refused our credentials (HTTP 403"),
    (422, "Nomos call for customer cus_sandbox_alice failed: HTTP 422"),
])
def test_a_refused_click_logs_the_request_id_for_the_operator(status, says, alice, nomos,
                                                             caplog, settings):
    from nomos_billing.sandbox import Fault

    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "MAX_RETRIES": 0}
    nomos.add_fault("POST /admin/magic_link", Fault(status=status), times=None)
    caplog.set_level("ERROR", logger="nomos_billing.views")
    client = Client()
    client.force_login(alice)
    client.get(PORTAL)
    [line] = [r.getMessage() for r in caplog.records if r.name == "nomos_billing.views"]
    assert says in line
    assert "requestId req_" in line


def test_json_endpoint_when_the_database_fails_after_sign_in_is_503_json_and_logged(
    alice, nomos, caplog
):
    # The session and the user load; the customer's row does not: the outage comes mid-click.
    execute = CursorWrapper.execute

    def customer_table_down(self: Any, sql: str, params: Any = None) -> Any:
        if "nomos_billing_nomoscustomer" in sql:
            raise OperationalError("server closed the connection")
        return execute(self, sql, params)

    client = csrf_client(alice)
    caplog.set_level("ERROR", logger="nomos_billing.views")
    with mock.patch.object(CursorWrapper, "execute", customer_table_down):
        response = client.post(PORTAL_LINK, {"csrfmiddlewaretoken": CSRF})
    assert response.status_code == 503
    assert response["Retry-After"] == "30"
    assert response.json()["code"] == "unavailable"
    [record] = [r for r in caplog.records if r.name == "nomos_billing.views"]
    assert record.getMessage() == "portal/link/: the database is unavailable"
    assert record.exc_info is not None and record.exc_info[0] is OperationalError
    assert nomos.count("POST /admin/magic_link") == 0


def test_a_csrf_refusal_of_the_json_endpoint_is_logged_with_its_reason(alice, nomos, caplog):
    caplog.set_level("WARNING", logger="nomos_billing.views")
    csrf_client(alice).post(PORTAL_LINK, {})
    lines = [r.getMessage() for r in caplog.records if r.name == "nomos_billing.views"]
    assert lines == ["portal/link/ refused: CSRF check failed (CSRF token missing.)"]


def test_a_json_click_during_a_nomos_outage_logs_whose_click_it_was(alice, nomos, caplog):
    from nomos_billing.sandbox import Fault

    nomos.add_fault("POST /admin/magic_link", Fault(status=503), times=None)
    caplog.set_level("WARNING", logger="nomos_billing.views")
    csrf_client(alice).post(PORTAL_LINK, {"csrfmiddlewaretoken": CSRF})
    lines = [r.getMessage() for r in caplog.records if r.name == "nomos_billing.views"]
    assert lines and all(f"customer {seed.ALICE}" in line for line in lines)


@pytest.mark.django_db
@pytest.mark.parametrize("status", [404, 401, 500])
def test_a_failure_without_a_request_id_is_logged_with_a_dash(status: int, bob: Any,
                                                              caplog: Any) -> None:
    with caplog.at_level("ERROR", logger="nomos_billing.views"):
        log_failure(NomosAPIError(status), bob)
    [line] = [r.getMessage() for r in caplog.records if r.name == "nomos_billing.views"]
    assert "requestId -)" in line


@pytest.mark.django_db
@pytest.mark.parametrize(("status", "ends"), [
    (422, "failed: HTTP 422 - (requestId -)"),
    (401, "(HTTP 401 -, requestId -): check NOMOS_BILLING['CLIENT_ID'] / ['CLIENT_SECRET'] and the "
          "client's write:* scope"),
])
def test_a_failure_without_an_error_code_is_logged_with_a_dash(status: int, ends: str, bob: Any,
                                                               caplog: Any) -> None:
    with caplog.at_level("ERROR", logger="nomos_billing.views"):
        log_failure(NomosAPIError(status), bob)
    [line] = [r.getMessage() for r in caplog.records if r.name == "nomos_billing.views"]
    assert line.endswith(ends)
