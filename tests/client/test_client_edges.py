"""The client on answers the sandbox does not give: malformed lists and links, errors without
ids, paging flags that disagree, and the exact error each one becomes. ``responses`` stands in
for Nomos here; the live sandbox covers the well-formed answers (test_client.py)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import responses

from nomos_billing import exceptions
from nomos_billing.client import NomosClient
from nomos_billing.exceptions import (
    NomosAPIError,
    NomosFilterIgnored,
    NomosServiceError,
    NomosUnavailable,
)
from nomos_billing.filters import ListFilter
from nomos_billing.httpdates import parse_http_date, retry_after_seconds
from nomos_billing.sandbox import Fault

pytestmark = pytest.mark.django_db(databases=[])

BASE = "https://nomos.test"


@pytest.fixture
def api() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(BASE + "/oauth/token", json={"access_token": "at", "expires_in": 3600})
        yield mock


@pytest.fixture
def client() -> NomosClient:
    return NomosClient(base_url=BASE, client_id="id", client_secret="secret", max_retries=0)


def error_fields(exc: NomosAPIError) -> tuple[Any, ...]:
    return (exc.status, exc.code, exc.message, exc.request_id, exc.method, exc.path)


def query(call: Any) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(call.request.url).query))


def api_calls(api: Any) -> list[Any]:
    return [c for c in api.calls if not c.request.url.endswith("/oauth/token")]


# -- lists --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [([1, 2], "list answer is not an object"), ("x", "list answer is not an object"),
     ({"items": {"id": "sub_1"}}, "list answer without items"),
     ({"items": "sub_1"}, "list answer without items")],
)
def test_a_malformed_list_answer_is_an_invalid_response(api, client, body, message):
    api.get(BASE + "/subscriptions", json=body)
    with pytest.raises(NomosAPIError) as info:
        client.list_page("/subscriptions")
    assert error_fields(info.value) == (200, "INVALID_RESPONSE", message, "", "GET",
                                        "/subscriptions")
    assert str(info.value) == f"GET /subscriptions -> HTTP 200: INVALID_RESPONSE: {message}"


def test_a_list_answer_that_is_not_json_names_the_request(api, client):
    api.get(BASE + "/customers", body="<html>maintenance</html>", status=200)
    with pytest.raises(NomosAPIError) as info:
        list(client.iter_customers())
    assert error_fields(info.value) == (200, "INVALID_RESPONSE",
                                        "Nomos answered with a body that is not JSON", "", "GET",
                                        "/customers")


def test_a_list_answer_without_items_is_an_empty_page(api, client):
    api.get(BASE + "/customers", json={"has_more": False})
    page = client.list_page("/customers")
    assert page == {"has_more": False, "items": []}
    assert list(client.iter_customers()) == []


def test_list_defaults_ask_for_the_largest_page_without_a_cursor(api, client):
    api.get(BASE + "/customers", json={"items": [{"id": "cus_1"}], "has_more": False})
    client.list_page("/customers")
    list(client.iter_list("/customers"))
    list(client.iter_customers())
    assert [query(c) for c in api_calls(api)] == [{"limit": "100"}] * 3


def test_a_walk_stops_when_nomos_says_there_is_no_more_whatever_the_cursor(api, client):
    api.get(BASE + "/customers", json={"items": [{"id": "cus_1"}], "has_more": False,
                                       "next_page": "c2"})
    walk = client.iter_customers(limit=5)
    assert [c["id"] for c in walk] == ["cus_1"]
    assert (walk.complete, walk.incomplete) == (True, "")
    assert len(api_calls(api)) == 1


def test_a_walk_stops_without_a_cursor_even_if_nomos_says_there_is_more(api, client, caplog):
    api.get(BASE + "/customers", json={"items": [{"id": "cus_1"}], "has_more": True,
                                       "next_page": None})
    api.get(BASE + "/customers", json={"items": [{"id": "cus_2"}], "has_more": True,
                                       "next_page": ""})
    for _ in range(2):
        walk = client.iter_customers(limit=5)
        assert len(list(walk)) == 1
        # It ended, but not on Nomos' last page: a caller that needs every item knows.
        assert walk.complete is False
        assert walk.incomplete == ("Nomos answered page 1 of GET /customers with has_more but "
                                   "no next_page cursor")
    assert len(api_calls(api)) == 2
    assert [r.getMessage() for r in caplog.records if r.name == "nomos_billing.client"] == [
        walk.incomplete + "; the walk ends there, incomplete"] * 2


def test_a_walk_knows_nomos_clock_from_its_first_page(api, client):
    api.get(BASE + "/customers", json={"items": [{"id": "cus_1"}], "has_more": True,
                                       "next_page": "c2"},
            headers={"Date": "Wed, 27 May 2026 07:28:00 GMT"})
    api.get(BASE + "/customers", json={"items": [{"id": "cus_2"}], "has_more": False},
            headers={"Date": "Wed, 27 May 2026 07:29:00 GMT"})
    walk = client.iter_customers(limit=1)
    assert (walk.complete, walk.server_time, walk.pages) == (False, None, 0)
    assert next(walk)["id"] == "cus_1"
    assert walk.server_time == datetime(2026, 5, 27, 7, 28, tzinfo=timezone.utc)
    assert [c["id"] for c in walk] == ["cus_2"]
    assert (walk.complete, walk.incomplete, walk.pages) == (True, "", 2)
    assert walk.server_time == datetime(2026, 5, 27, 7, 28, tzinfo=timezone.utc)


def test_a_walk_without_a_date_has_no_clock(api, client):
    api.get(BASE + "/customers", json={"items": [], "has_more": False})
    walk = client.iter_customers()
    assert list(walk) == []
    assert (walk.complete, walk.server_time) == (True, None)


def test_a_walk_follows_the_cursor(api, client):
    api.get(BASE + "/customers", json={"items": [{"id": "cus_1"}], "has_more": True,
                                       "next_page": "c2"})
    api.get(BASE + "/customers", json={"items": [{"id": "cus_2"}], "has_more": False})
    assert [c["id"] for c in client.iter_customers(limit=1)] == ["cus_1", "cus_2"]
    assert [query(c) for c in api_calls(api)] == [{"limit": "1"}, {"limit": "1", "cursor": "c2"}]


def test_list_subscriptions_sends_its_filters_and_checks_the_page(api, client):
    api.get(BASE + "/subscriptions", json={"items": [{"id": "sub_1", "customer": "cus_2"}]})
    with pytest.raises(NomosFilterIgnored) as info:
        client.list_subscriptions(customer="cus_1", limit=7)
    assert info.value.path == "/subscriptions"
    assert info.value.method == "GET"
    assert query(api_calls(api)[0]) == {"limit": "7", "filter[customer][eq]": "cus_1"}


def test_iter_customers_checks_every_item_against_its_filters(api, client):
    api.get(BASE + "/customers", json={"items": [{"id": "cus_1", "email": "a@example.com"}]})
    wanted = ListFilter("email", "eq", "b@example.com")
    with pytest.raises(NomosFilterIgnored) as info:
        list(client.iter_customers(filters=[wanted]))
    assert info.value.path == "/customers"
    assert query(api_calls(api)[0])["filter[email][eq]"] == "b@example.com"


# -- single objects and errors -----------------------------------------------------------------


def test_get_event_asks_for_the_escaped_id(api, client):
    api.get(BASE + "/events/evt%2F1", json={"id": "evt/1"})
    assert client.get_event("evt/1") == {"id": "evt/1"}
    assert api_calls(api)[0].request.method == "GET"


def test_a_magic_link_answer_without_a_link_is_an_invalid_response(api, client):
    api.post(BASE + "/admin/magic_link", json={"url": "https://x"})
    with pytest.raises(NomosAPIError) as info:
        client.create_magic_link("cus_1")
    assert error_fields(info.value) == (200, "INVALID_RESPONSE",
                                        "magic link response without link", "", "POST",
                                        "/admin/magic_link")


def test_an_error_without_code_or_request_id_leaves_them_empty(api, client):
    api.get(BASE + "/customers/cus_1", status=404, body="not json")
    with pytest.raises(NomosAPIError) as info:
        client.get_customer("cus_1")
    assert error_fields(info.value) == (404, "", "", "", "GET", "/customers/cus_1")
    assert str(info.value) == "GET /customers/cus_1 -> HTTP 404"


def test_an_error_takes_the_request_id_from_the_header_when_the_body_has_none(api, client):
    api.get(BASE + "/customers/cus_1", status=404, json={"code": "NOT_FOUND"},
            headers={"X-Request-Id": "req_h"})
    with pytest.raises(NomosAPIError) as info:
        client.get_customer("cus_1")
    assert (info.value.code, info.value.request_id) == ("NOT_FOUND", "req_h")


def test_business_errors_are_kept_short(api, client):
    many = [{"code": f"e{n}", "field": "zip"} for n in range(59)]
    api.post(BASE + "/leads", status=422, json={"code": "VALIDATION", "errors": [
        {"code": "too_long", "field": "zip", "message": "m" * 600, "extra": "dropped"}, *many]})
    with pytest.raises(NomosAPIError) as info:
        client.create_lead({"zip": "1"})
    assert len(info.value.errors) == 50
    assert info.value.errors[0] == {"code": "too_long", "field": "zip", "message": "m" * 500}
    assert info.value.errors[-1] == {"code": "e48", "field": "zip"}


def test_an_error_is_logged_with_status_code_and_request_id(api, client, caplog):
    api.get(BASE + "/customers/cus_1", status=404, json={"code": "NOT_FOUND",
                                                         "requestId": "req_b"})
    with caplog.at_level(logging.WARNING, logger="nomos_billing.client"), \
            pytest.raises(NomosAPIError):
        client.get_customer("cus_1")
    assert caplog.messages == ["Nomos GET /customers/cus_1 -> 404 NOT_FOUND (requestId req_b)"]


def test_a_magic_link_answer_that_is_not_an_object_is_an_invalid_response(api, client):
    api.post(BASE + "/admin/magic_link", json=["https://x"])
    with pytest.raises(NomosAPIError) as info:
        client.create_magic_link("cus_1")
    assert (info.value.code, info.value.message) == ("INVALID_RESPONSE",
                                                     "magic link response without link")


def test_get_event_errors_name_the_request(api, client):
    api.get(BASE + "/events/evt_1", status=404, json={"code": "NOT_FOUND"})
    with pytest.raises(NomosAPIError) as info:
        client.get_event("evt_1")
    assert str(info.value) == "GET /events/evt_1 -> HTTP 404: NOT_FOUND"


def test_list_subscriptions_passes_cursor_and_every_filter(api, client):
    api.get(BASE + "/subscriptions", json={"items": [], "has_more": False})
    status = ListFilter("status", "eq", "active")
    since = "2026-01-01T00:00:00Z"
    client.list_subscriptions()
    client.list_subscriptions(cursor="c9", limit=3, updated_since=since, filters=[status])
    first, second = (query(c) for c in api_calls(api))
    assert first == {"limit": "100"}
    updated = ListFilter("updated_at", "gte", since)
    assert second == {"limit": "3", "cursor": "c9", status.param: status.wire_value,
                      updated.param: updated.wire_value}


# -- Retry-After at the limit ------------------------------------------------------------------


def test_a_retry_after_equal_to_the_limit_is_waited_for(nomos, retry_sleeps, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "MAX_RETRY_WAIT": 2}
    nomos.add_fault("GET /subscriptions/{id}", Fault(status=429, retry_after=2), times=1)
    client = NomosClient()
    assert client.get_subscription("sub_sandbox_alice")["id"] == "sub_sandbox_alice"
    assert retry_sleeps == [2]


def test_a_retry_after_over_the_limit_is_not(nomos, retry_sleeps, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "MAX_RETRY_WAIT": 2}
    nomos.add_fault("GET /subscriptions/{id}", Fault(status=429, retry_after=3), times=1)
    with pytest.raises(NomosUnavailable):
        NomosClient().get_subscription("sub_sandbox_alice")
    assert retry_sleeps == []


def http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(timezone.utc), usegmt=True)


def test_a_retry_after_date_is_measured_against_nomos_clock(nomos, retry_sleeps, settings):
    # Nomos an hour behind us: against our clock its date is long past (no wait at all).
    nomos.clock_skew = -3600
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "MAX_RETRY_WAIT": 5}
    when = http_date(nomos.now() + timedelta(seconds=3))
    nomos.add_fault("GET /subscriptions/{id}", Fault(status=429, retry_after=when), times=1)
    assert NomosClient().get_subscription("sub_sandbox_alice")["id"] == "sub_sandbox_alice"
    (slept,) = retry_sleeps
    assert 2 <= slept <= 4


def test_a_long_retry_after_date_reaches_the_error_without_a_wait(nomos, retry_sleeps, settings):
    nomos.clock_skew = 900
    when = http_date(nomos.now() + timedelta(seconds=120))
    nomos.add_fault("GET /subscriptions/{id}", Fault(status=503, retry_after=when), times=1)
    with pytest.raises(NomosServiceError) as info:
        NomosClient().get_subscription("sub_sandbox_alice")
    assert 119 <= info.value.retry_after <= 121
    assert retry_sleeps == []


@pytest.mark.parametrize("value", ["soon", "²", "Mon, 99 Foo 2026 00:00:00 GMT"])
def test_a_retry_after_that_is_neither_form_is_no_hint(nomos, retry_sleeps, value):
    nomos.add_fault("GET /subscriptions/{id}", Fault(status=503, retry_after=value), times=1)
    assert NomosClient().get_subscription("sub_sandbox_alice")["id"] == "sub_sandbox_alice"
    # urllib3's own backoff instead (its first retry is immediate).
    assert retry_sleeps == []


def test_retry_after_forms():
    assert retry_after_seconds({"Retry-After": "30"}) == 30
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"Retry-After": " "}) is None
    base = datetime(2026, 5, 27, 7, 28, tzinfo=timezone.utc)
    headers = {"Date": http_date(base), "Retry-After": http_date(base + timedelta(seconds=90))}
    assert retry_after_seconds(headers) == 90
    assert retry_after_seconds({**headers, "Retry-After": http_date(base - timedelta(hours=1))}) \
        == 0
    # "-0000" is GMT too.
    assert parse_http_date("Wed, 27 May 2026 07:28:00 -0000") == base
    assert parse_http_date(None) is None
    assert parse_http_date("") is None


def test_an_error_keeps_nomos_code_message_and_request_id(api, client):
    api.get(BASE + "/customers/cus_1", status=404, json={
        "code": "NOT_FOUND", "message": "no such customer", "requestId": "req_m"})
    with pytest.raises(NomosAPIError) as info:
        client.get_customer("cus_1")
    assert error_fields(info.value) == (404, "NOT_FOUND", "no such customer", "req_m", "GET",
                                        "/customers/cus_1")
    assert str(info.value) == ("GET /customers/cus_1 -> HTTP 404: NOT_FOUND: no such customer "
                               "(requestId req_m)")


def test_get_lead_asks_for_the_escaped_id_and_names_it_in_errors(api, client):
    api.get(BASE + "/leads/lead%2F1", json={"id": "lead/1", "subscription": None})
    api.get(BASE + "/leads/lead_gone", status=404, json={"code": "NOT_FOUND"})
    assert client.get_lead("lead/1") == {"id": "lead/1", "subscription": None}
    with pytest.raises(NomosAPIError) as info:
        client.get_lead("lead_gone")
    assert str(info.value) == "GET /leads/lead_gone -> HTTP 404: NOT_FOUND"


@pytest.mark.parametrize(("field", "operator", "value", "item", "matches"), [
    ("status", "in", ["active", "pending"], {"status": "pending"}, True),
    ("status", "in", ["active", "pending"], {"status": "ended"}, False),
    ("plan", "is_null", True, {"plan": None}, True),
    ("plan", "is_null", True, {"plan": "pln_x"}, False),
    ("plan", "is_null", False, {"plan": None}, False),
    # A naive datetime from our own code is UTC.
    ("updated_at", "gte", datetime(2026, 1, 1, 12), {"updated_at": "2026-01-01T12:00:00Z"}, True),
    ("updated_at", "lte", datetime(2026, 1, 1, 12), {"updated_at": "2026-01-01T12:00:01Z"}, False),
])
def test_a_list_filter_matches_what_nomos_would_return(field, operator, value, item, matches):
    assert ListFilter(field, operator, value).matches(item) is matches


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (exceptions.NomosError("ours"), "failed"),
        (exceptions.NomosUnavailable("timeout"), "outage"),
        (exceptions.NomosServiceError(503), "outage"),
        (exceptions.NomosServiceError(429), "outage"),
        (exceptions.RateLimited("portal", 30), "rate_limited"),
        (exceptions.NomosConfigurationError("CLIENT_ID is not set"), "misconfigured"),
        (exceptions.NomosCredentialsRefused(401), "refused"),
        (exceptions.NomosAPIError(403), "refused"),
        (exceptions.NomosAPIError(404), "not_found"),
        (exceptions.NomosAPIError(422, errors=[{"code": "too_small"}]), "invalid"),
        (exceptions.NomosAPIError(422), "rejected"),
        (exceptions.NomosAPIError(200, "INVALID_LINK"), "rejected"),
        (exceptions.NomosFilterIgnored("/subscriptions", "status=active", "sub_1"),
         "filter_ignored"),
        (exceptions.NomosNotLinked("no customer"), "not_linked"),
    ],
)
def test_each_error_carries_its_kind(error: exceptions.NomosError, kind: str) -> None:
    assert error.kind == kind
    assert error.reported is (kind == "misconfigured" or isinstance(
        error, exceptions.NomosCredentialsRefused))
