"""The API client against a live sandbox: retries, token handling, errors, pagination."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import pytest
from django.core.cache import caches

from nomos_billing.client import NomosClient, get_client, reset_client
from nomos_billing.exceptions import (
    NomosAPIError,
    NomosConfigurationError,
    NomosCredentialsRefused,
    NomosFilterIgnored,
    NomosServiceError,
    NomosUnavailable,
)
from nomos_billing.filters import ListFilter
from nomos_billing.sandbox import Fault
from tests.ports import free_port

pytestmark = pytest.mark.django_db(databases=[])

SUB = "GET /subscriptions/{id}"
TOKEN = "POST /oauth/token"
MINT = "POST /admin/magic_link"


@pytest.fixture
def client(nomos) -> NomosClient:
    return get_client()


def test_get_subscription_embeds_the_customer(client, nomos):
    data = client.get_subscription("sub_sandbox_alice")
    assert data["id"] == "sub_sandbox_alice"
    assert data["customer"]["id"] == "cus_sandbox_alice"
    assert nomos.count(SUB) == 1


def test_every_call_pins_the_api_version_and_sends_a_bearer_token(client, nomos):
    client.get_customer("cus_sandbox_alice")
    exchange = [e for e in nomos.request_log if e["path"].startswith("/customers/")][0]
    headers = {k.lower(): v for k, v in exchange["headers"].items()}
    assert headers["x-api-version"] == "2026-05-27.curie"
    assert headers["authorization"].startswith("Bearer ")


def test_token_request_is_form_encoded_client_credentials_with_basic_auth(client, nomos):
    client.get_customer("cus_sandbox_alice")
    exchange = [e for e in nomos.request_log if e["path"] == "/oauth/token"][0]
    headers = {k.lower(): v for k, v in exchange["headers"].items()}
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert headers["authorization"].startswith("Basic ")
    assert exchange["body"] == b"grant_type=client_credentials"


def _token_requests(nomos):
    return [(e["headers"].get("Content-Type"), e["status"]) for e in nomos.request_log
            if e["path"] == "/oauth/token"]


def test_a_token_endpoint_refusing_forms_gets_json_once_and_from_then_on(client, nomos):
    nomos.token_content_types = {"application/json"}
    client.get_customer("cus_sandbox_alice")
    assert _token_requests(nomos) == [("application/x-www-form-urlencoded", 415),
                                      ("application/json", 200)]
    body = [e for e in nomos.request_log if e["path"] == "/oauth/token"][-1]["body"]
    assert json.loads(body) == {"grant_type": "client_credentials"}

    reset_client()  # a new client in the same process remembers the choice
    caches["default"].clear()
    get_client().get_customer("cus_sandbox_alice")
    assert _token_requests(nomos)[2:] == [("application/json", 200)]


def test_a_400_to_the_form_is_retried_once_as_json(client, nomos):
    nomos.add_fault(TOKEN, Fault(status=400))
    client.get_customer("cus_sandbox_alice")
    assert _token_requests(nomos) == [("application/x-www-form-urlencoded", 400),
                                      ("application/json", 200)]


@pytest.mark.parametrize("status", [401, 403, 500])
def test_other_token_failures_are_not_retried_as_json(client, nomos, settings, status):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "MAX_RETRIES": 0}
    nomos.add_fault(TOKEN, Fault(status=status), times=None)
    with pytest.raises(NomosAPIError):
        get_client().get_customer("cus_sandbox_alice")
    assert {ct for ct, _ in _token_requests(nomos)} == {"application/x-www-form-urlencoded"}


def test_json_refused_too_is_an_error_and_not_remembered(client, nomos):
    nomos.token_content_types = set()
    with pytest.raises(NomosAPIError) as excinfo:
        client.get_customer("cus_sandbox_alice")
    assert excinfo.value.status == 415
    nomos.token_content_types = {"application/x-www-form-urlencoded"}
    client.get_customer("cus_sandbox_alice")
    assert _token_requests(nomos)[-1] == ("application/x-www-form-urlencoded", 200)


# A hundred calls in a row: one token, not pacing (the suite's client limiter is off).
@pytest.mark.sandbox_rate_limit(0)
def test_hundred_calls_cause_exactly_one_token_request(client, nomos):
    for _ in range(100):
        client.get_subscription("sub_sandbox_alice")
    assert nomos.count(SUB) == 100
    assert nomos.count(TOKEN) == 1


# A hundred calls in a row: one connection, not pacing.
@pytest.mark.sandbox_rate_limit(0)
def test_hundred_calls_reuse_one_connection(client, nomos):
    client.get_subscription("sub_sandbox_alice")
    before = nomos.connections
    for _ in range(100):
        client.get_subscription("sub_sandbox_alice")
    assert nomos.connections - before == 0


def test_a_401_refreshes_the_token_once_and_retries_once(client, nomos):
    client.get_subscription("sub_sandbox_alice")
    nomos.expire_tokens()
    assert client.get_subscription("sub_sandbox_alice")["id"] == "sub_sandbox_alice"
    assert nomos.count(TOKEN) == 2
    assert nomos.count(SUB) == 3


def test_a_persistent_401_becomes_an_api_error_after_one_retry(client, nomos):
    nomos.add_fault(SUB, Fault(status=401), times=None)
    with pytest.raises(NomosAPIError) as excinfo:
        client.get_subscription("sub_sandbox_alice")
    assert excinfo.value.status == 401
    assert nomos.count(SUB) == 2
    assert nomos.count(TOKEN) == 2


def test_429_with_retry_after_is_retried(client, nomos, retry_sleeps):
    nomos.add_fault(SUB, Fault(status=429, retry_after=1), times=1)
    assert client.get_subscription("sub_sandbox_alice")["id"] == "sub_sandbox_alice"
    assert nomos.count(SUB) == 2
    assert retry_sleeps == [1]  # it honoured Retry-After


def test_a_long_retry_after_is_not_slept_through(client, nomos, retry_sleeps):
    nomos.add_fault(SUB, Fault(status=429, retry_after=120), times=None)
    with pytest.raises(NomosUnavailable) as excinfo:
        client.get_subscription("sub_sandbox_alice")
    assert retry_sleeps == []
    assert excinfo.value.retry_after == 120
    assert nomos.count(SUB) == 1


def test_repeated_500_becomes_an_api_error_carrying_the_request_id(client, nomos):
    nomos.add_fault(SUB, Fault(status=500), times=None)
    with pytest.raises(NomosAPIError) as excinfo:
        client.get_subscription("sub_sandbox_alice")
    error = excinfo.value
    assert error.status == 500
    assert error.request_id.startswith("req_")
    assert error.request_id in str(error)
    assert isinstance(error, NomosUnavailable)  # an outage for callers that only care about that
    assert nomos.count(SUB) == 4  # first try + MAX_RETRIES (3)


def test_a_500_then_success_is_retried_transparently(client, nomos):
    nomos.add_fault(SUB, Fault(status=503), times=2)
    assert client.get_subscription("sub_sandbox_alice")["id"] == "sub_sandbox_alice"
    assert nomos.count(SUB) == 3


def test_a_hang_becomes_unavailable_within_the_read_timeout(client, nomos, retry_sleeps):
    # One hanging answer, then normal ones: a retried read would succeed and not raise.
    nomos.add_fault(SUB, Fault(hang=5), times=1)
    with pytest.raises(NomosUnavailable):
        client.get_subscription("sub_sandbox_alice")
    assert nomos.count(SUB) == 1
    assert retry_sleeps == []


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_magic_link_post_is_repeated_since_a_second_single_use_link_is_harmless(
        client, nomos, status):
    # Nomos minted the first link and then failed: the user gets the second one, and the
    # first, never handed out, expires unused.
    nomos.add_fault(MINT, Fault(status=status, retry_after=0, act_first=status != 429),
                    times=1)
    link = client.create_magic_link("cus_sandbox_alice")
    assert link.startswith(nomos.portal_origin)
    assert nomos.count(MINT) == 2
    assert [e["status"] for e in nomos.request_log if e["key"] == MINT] == [status, 200]


LEAD = "POST /leads"
LEAD_BODY = {"plan": "pln_sandbox_home", "address": {"zip": "10115"},
             "meter": {"estimated_usage": 2500}}


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_lead_post_nomos_may_have_acted_on_is_sent_once(client, nomos, status):
    # Nomos made the lead and then failed: a second POST would make a second one.
    nomos.add_fault(LEAD, Fault(status=status, retry_after=0, act_first=True), times=1)
    with pytest.raises(NomosServiceError) as excinfo:
        client.create_lead(LEAD_BODY)
    assert excinfo.value.status == status
    assert nomos.count(LEAD) == 1
    assert len(nomos.leads) == 1


def test_a_lead_post_refused_by_the_rate_limit_is_retried(client, nomos, retry_sleeps):
    nomos.add_fault(LEAD, Fault(status=429, retry_after=1), times=1)
    lead = client.create_lead(LEAD_BODY)
    assert nomos.count(LEAD) == 2
    assert list(nomos.leads) == [lead["id"]]
    assert retry_sleeps == [1.0]


def test_a_lead_post_whose_answer_never_came_is_not_sent_again(nomos, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TIMEOUT": (2, 0.3)}
    nomos.add_fault(LEAD, Fault(hang=1.5, act_first=True), times=1)
    with pytest.raises(NomosUnavailable, match="did not answer POST /leads in time"):
        get_client().create_lead(LEAD_BODY)
    assert nomos.count(LEAD) == 1
    assert len(nomos.leads) == 1


def test_a_lead_post_whose_connection_broke_after_sending_is_not_sent_again(client, nomos):
    nomos.add_fault(LEAD, Fault(drop_connection=True, act_first=True), times=1)
    with pytest.raises(NomosUnavailable, match="broke"):
        client.create_lead(LEAD_BODY)
    assert nomos.count(LEAD) == 1
    assert len(nomos.leads) == 1


def test_a_lead_post_that_could_not_connect_is_retried(settings, retry_sleeps, caplog):
    from nomos_billing.sandbox import Sandbox, SandboxServer

    sandbox = Sandbox()
    server = SandboxServer(sandbox).start()
    try:
        client = NomosClient(base_url=server.url, client_secret="sandbox-secret",
                             client_id="sandbox-client", max_retries=2)
        client.tokens.get()  # the token is in hand; then Nomos goes away
    finally:
        server.stop()
    with pytest.raises(NomosUnavailable, match="could not connect"):
        client.create_lead(LEAD_BODY)
    # Nothing was sent, so the connection was tried again, twice.
    refused = [r for r in caplog.records
               if r.name == "urllib3.connectionpool" and r.getMessage().startswith("Retrying")
               and "Connection refused" in r.getMessage()]
    assert len(refused) == 2
    assert sandbox.count(LEAD) == 0


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
def test_other_4xx_are_not_retried(client, nomos, status):
    nomos.add_fault(SUB, Fault(status=status), times=None)
    with pytest.raises(NomosAPIError) as excinfo:
        client.get_subscription("sub_sandbox_alice")
    assert excinfo.value.status == status
    assert not isinstance(excinfo.value, NomosUnavailable)
    assert nomos.count(SUB) == 1


def test_unknown_customer_is_a_404_with_the_nomos_code(client, nomos):
    with pytest.raises(NomosAPIError) as excinfo:
        client.create_magic_link("cus_doesnotexist")
    assert excinfo.value.status == 404
    assert excinfo.value.code == "NOT_FOUND"
    assert excinfo.value.is_not_found


def test_connection_refused_is_unavailable(settings):
    port = free_port()  # nothing listens there
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "API_BASE_URL": f"http://127.0.0.1:{port}",
                              "MAX_RETRIES": 1}
    with pytest.raises(NomosUnavailable) as excinfo:
        get_client().get_subscription("sub_x")
    assert "sandbox-secret" not in str(excinfo.value)
    # True words: nothing answered, so it says so, not "timed out".
    assert "could not connect" in str(excinfo.value)
    assert "time" not in str(excinfo.value)


def test_wrong_credentials_are_an_api_error_without_the_secret(nomos, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "CLIENT_SECRET": "wrong-secret-value"}
    with pytest.raises(NomosAPIError) as excinfo:
        get_client().get_subscription("sub_sandbox_alice")
    assert excinfo.value.status == 401
    assert "wrong-secret-value" not in str(excinfo.value) + repr(excinfo.value)
    assert nomos.count(TOKEN) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_refused_token_is_a_configuration_error_naming_the_settings(nomos, status, caplog):
    nomos.add_fault(TOKEN, Fault(status=status), times=None)
    with pytest.raises(NomosCredentialsRefused) as excinfo:
        get_client().get_subscription("sub_sandbox_alice")
    exc = excinfo.value
    # One code path an outage breaker can tell apart from an outage.
    assert isinstance(exc, NomosConfigurationError) and not isinstance(exc, NomosUnavailable)
    assert exc.status == status and exc.settings == ("CLIENT_ID", "CLIENT_SECRET")
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert r"NOMOS_BILLING['CLIENT_ID'] / NOMOS_BILLING['CLIENT_SECRET']" in error.getMessage()
    assert nomos.count("GET /subscriptions/{id}") == 0


def test_missing_credentials_name_the_setting(settings):
    settings.NOMOS_BILLING = {"CLIENT_ID": "", "CLIENT_SECRET": ""}
    with pytest.raises(NomosConfigurationError, match="CLIENT_ID"):
        get_client().fetch_token()


def test_iter_subscriptions_walks_every_page(client, nomos):
    customer = nomos.add_customer(email="many@example.com", first_name="M", last_name="Any")
    for _ in range(7):
        nomos.add_subscription(customer["id"])
    ids = [s["id"] for s in client.iter_subscriptions(limit=2)]
    assert len(ids) == len(set(ids)) == len(nomos.subscriptions)
    pages = nomos.count("GET /subscriptions")
    assert pages == -(-len(ids) // 2)


def test_iter_subscriptions_fetches_pages_lazily(client, nomos):
    iterator = client.iter_subscriptions(limit=1)
    next(iterator)
    assert nomos.count("GET /subscriptions") == 1


def test_a_filtered_walk_sends_the_filter_and_yields_only_matching_items(client, nomos):
    items = list(client.iter_subscriptions(customer="cus_sandbox_acme"))
    assert sorted(i["id"] for i in items) == ["sub_sandbox_acme_consumption",
                                              "sub_sandbox_acme_feed_in"]
    (exchange,) = [e for e in nomos.request_log if e["path"] == "/subscriptions"]
    assert "filter%5Bcustomer%5D%5Beq%5D=cus_sandbox_acme" in exchange["query"]


def test_a_walk_whose_filter_nomos_ignored_is_refused_before_any_item(client, nomos):
    nomos.add_fault("GET /subscriptions", Fault(ignore_filters=True))
    walk = client.iter_subscriptions(customer="cus_sandbox_acme", limit=100)
    with pytest.raises(NomosFilterIgnored) as excinfo:
        next(walk)
    assert excinfo.value.filter == "filter[customer][eq]=cus_sandbox_acme"
    assert excinfo.value.item_id == "sub_sandbox_alice"
    assert "ignored the filter" in str(excinfo.value)
    assert nomos.count("GET /subscriptions") == 1


def test_changed_since_walk_uses_updated_at_gte_and_checks_it(client, nomos):
    nomos.set_subscription_status("sub_sandbox_acme_feed_in", "active")
    since = datetime(2026, 2, 1, tzinfo=timezone.utc)
    assert [i["id"] for i in client.iter_subscriptions(updated_since=since)] == [
        "sub_sandbox_acme_feed_in"]
    (exchange,) = [e for e in nomos.request_log if e["path"] == "/subscriptions"]
    assert "filter%5Bupdated_at%5D%5Bgte%5D=2026-02-01T00%3A00%3A00Z" in exchange["query"]
    nomos.add_fault("GET /subscriptions", Fault(ignore_filters=True))
    with pytest.raises(NomosFilterIgnored, match="updated_at"):
        list(client.iter_subscriptions(updated_since="2026-02-01T00:00:00Z"))


def test_a_filter_on_a_field_nomos_does_not_filter_on_is_caught(client, nomos):
    # "number" is not a documented filter: Nomos (and the sandbox) ignore it.
    wanted = nomos.subscriptions["sub_sandbox_alice"]["number"]
    with pytest.raises(NomosFilterIgnored):
        list(client.iter_subscriptions(filters=[ListFilter("number", "eq", wanted)]))


@pytest.mark.parametrize(("flt", "item", "expected"), [
    (ListFilter("customer", "eq", "cus_a"), {"customer": "cus_a"}, True),
    (ListFilter("customer", "eq", "cus_a"), {"customer": {"id": "cus_a"}}, True),
    (ListFilter("customer", "eq", "cus_a"), {"customer": "cus_b"}, False),
    (ListFilter("status", "ne", "ended"), {"status": "active"}, True),
    (ListFilter("status", "in", ["pending", "active"]), {"status": "ended"}, False),
    (ListFilter("updated_at", "gte", "2026-01-01T00:00:00Z"),
     {"updated_at": "2026-01-01T01:00:00+01:00"}, True),
    (ListFilter("updated_at", "gte", "2026-01-01T00:00:00Z"),
     {"updated_at": "2025-12-31T23:59:59.999Z"}, False),
    (ListFilter("updated_at", "lte", "2026-01-01T00:00:00Z"), {"updated_at": None}, False),
    # "lte" takes the bound itself in, as "gte" does: the same moment in another offset.
    (ListFilter("updated_at", "lte", "2026-01-01T00:00:00Z"),
     {"updated_at": "2026-01-01T01:00:00+01:00"}, True),
    (ListFilter("updated_at", "lte", "2026-01-01T00:00:00Z"),
     {"updated_at": "2026-01-01T00:00:00.001Z"}, False),
    (ListFilter("plan", "starts_with", "pln_"), {"plan": "pln_x"}, True),
    (ListFilter("plan", "is_null", True), {"plan": "pln_x"}, False),
])
def test_list_filter_matching(flt, item, expected):
    assert flt.matches(item) is expected


def test_a_date_filter_needs_a_date():
    with pytest.raises(ValueError):
        ListFilter("updated_at", "gte", "yesterday")


def test_ids_cannot_change_the_path(client, nomos):
    with pytest.raises(NomosAPIError) as excinfo:
        client.get_subscription("../customers/cus_sandbox_alice")
    assert excinfo.value.status == 404


def test_repr_of_client_and_token_hide_secrets(client, nomos):
    token = client.tokens.get()
    assert token.value not in repr(token)
    assert "sandbox-secret" not in repr(client)
