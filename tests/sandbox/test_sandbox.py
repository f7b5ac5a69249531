"""The sandbox (fake Nomos) as a client sees it: HTTP against a live SandboxServer."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from io import BytesIO
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from nomos_billing.sandbox import Fault, Sandbox, SandboxServer
from nomos_billing.sandbox import tokens as sandbox_tokens
from nomos_billing.sandbox import webhooks as sandbox_webhooks
from nomos_billing.sandbox.app import SandboxApp
from nomos_billing.signatures import sign_payload, verify_signature
from tests.receivers import Receiver

pytestmark = pytest.mark.live

AUTH = ("sandbox-client", "sandbox-secret")
FORM = {"grant_type": "client_credentials"}


@pytest.fixture
def sb(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    # As shipped (Nomos' 10 requests/s) unless marked ``sandbox_rate_limit`` (tests/conftest.py).
    marker = request.node.get_closest_marker("sandbox_rate_limit")
    sandbox = Sandbox() if marker is None else Sandbox(rate_limit=marker.args[0])
    with SandboxServer(sandbox):
        yield sandbox


def bearer(sb: Sandbox) -> dict[str, str]:
    return {"Authorization": f"Bearer {sb.issue_token()}"}


def assert_envelope(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert body["message"]
    assert re.fullmatch(r"req_[0-9a-f]{24}", body["requestId"])
    assert response.headers["X-Request-Id"] == body["requestId"]
    assert body["docs"].endswith(code)
    assert isinstance(body["errors"], list)
    return body


# -- OAuth --------------------------------------------------------------------------------------

def test_token_with_basic_auth_and_form_body(sb: Sandbox, http: requests.Session) -> None:
    response = http.post(f"{sb.base_url}/oauth/token", auth=AUTH, data=FORM)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "read:* write:*"
    assert body["refresh_token"] and body["access_token"]
    assert sb.token_scope(body["access_token"]) == "read:* write:*"
    assert body["access_token"] in sb.issued_tokens()


def test_token_with_json_body(sb: Sandbox, http: requests.Session) -> None:
    response = http.post(f"{sb.base_url}/oauth/token", auth=AUTH, json=FORM)
    assert response.status_code == 200
    assert response.json()["access_token"] != ""


@pytest.mark.parametrize("auth", [None, ("sandbox-client", "wrong"), ("other", "sandbox-secret")])
def test_token_needs_the_right_basic_credentials(sb: Sandbox, http: requests.Session,
                                                  auth: tuple[str, str] | None) -> None:
    response = http.post(f"{sb.base_url}/oauth/token", auth=auth, data=FORM)
    assert_envelope(response, 401, "UNAUTHORIZED")


def test_client_secret_in_the_body_is_not_basic_auth(sb: Sandbox, http: requests.Session) -> None:
    data = {**FORM, "client_id": AUTH[0], "client_secret": AUTH[1]}
    assert_envelope(http.post(f"{sb.base_url}/oauth/token", data=data), 401, "UNAUTHORIZED")


@pytest.mark.parametrize("data", [{}, {"grant_type": "password"}, {"grant_type": "refresh_token"}])
def test_only_client_credentials_is_granted(sb: Sandbox, http: requests.Session,
                                            data: dict[str, str]) -> None:
    body = assert_envelope(http.post(f"{sb.base_url}/oauth/token", auth=AUTH, data=data),
                           400, "BAD_REQUEST")
    assert body["errors"][0]["field"] == "grant_type"


def test_configured_credentials_ttl_and_scope(http: requests.Session, monkeypatch) -> None:
    # The sandbox's clock, moved by the test: no sleeping past the TTL on a busy machine.
    later = [0.0]
    monkeypatch.setattr(sandbox_tokens, "time", SimpleNamespace(
        monotonic=lambda: time.monotonic() + later[0], time=time.time))
    sandbox = Sandbox(client_id="id-x", client_secret="secret-x", token_ttl=30, seed=True,
                      scope="read:*")
    with SandboxServer(sandbox) as server:
        body = http.post(f"{server.url}/oauth/token", auth=("id-x", "secret-x"), data=FORM).json()
        assert body["scope"] == "read:*"
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        assert http.get(f"{server.url}/customers/cus_sandbox_alice", headers=headers).ok
        # read:* only: minting a portal link is a write.
        assert_envelope(http.post(f"{server.url}/admin/magic_link", headers=headers,
                                  json={"customerId": "cus_sandbox_alice"}), 403, "FORBIDDEN")
        later[0] = 29.5
        assert http.get(f"{server.url}/customers/cus_sandbox_alice", headers=headers).ok
        later[0] = 30
        assert_envelope(http.get(f"{server.url}/customers/cus_sandbox_alice", headers=headers),
                        401, "UNAUTHORIZED")


# -- bearer tokens ------------------------------------------------------------------------------

@pytest.mark.parametrize("header", [None, "Bearer", "Bearer not-a-token", "Basic abc"])
def test_api_needs_a_valid_bearer_token(sb: Sandbox, http: requests.Session,
                                        header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = http.get(f"{sb.base_url}/subscriptions/sub_sandbox_alice", headers=headers)
    assert_envelope(response, 401, "UNAUTHORIZED")


def test_expired_tokens_are_refused(sb: Sandbox, http: requests.Session) -> None:
    headers = bearer(sb)
    url = f"{sb.base_url}/subscriptions/sub_sandbox_alice"
    assert http.get(url, headers=headers).status_code == 200
    sb.expire_tokens()
    assert_envelope(http.get(url, headers=headers), 401, "UNAUTHORIZED")


def test_api_version_is_echoed_and_request_ids_are_unique(sb: Sandbox,
                                                          http: requests.Session) -> None:
    url = f"{sb.base_url}/customers/cus_sandbox_alice"
    default = http.get(url, headers=bearer(sb))
    pinned = http.get(url, headers={**bearer(sb), "X-API-Version": "2026-05-27.curie"})
    other = http.get(url, headers={**bearer(sb), "X-API-Version": "2025-01-01.test"})
    assert default.headers["X-API-Version"] == "2026-05-27.curie"
    assert pinned.headers["X-API-Version"] == "2026-05-27.curie"
    # An unknown version is refused, as the document's error codes say.
    assert_envelope(other, 400, "BAD_REQUEST")
    assert other.json()["errors"] == [{
        "code": "upgrade_api_version", "field": "X-API-Version",
        "message": "Unknown API version '2025-01-01.test'; use 2026-05-27.curie"}]
    ids = {r.headers["X-Request-Id"] for r in (default, pinned, other)}
    assert len(ids) == 3


# -- resources ----------------------------------------------------------------------------------

def test_subscription_embeds_the_full_customer(sb: Sandbox, http: requests.Session) -> None:
    body = http.get(f"{sb.base_url}/subscriptions/sub_sandbox_alice", headers=bearer(sb)).json()
    assert body["object"] == "subscription"
    assert body["status"] == "active"
    assert body["type"] == "consumption"
    assert body["metadata"] == {"campaign": "sandbox-seed"}
    assert body["customer"] == sb.customers["cus_sandbox_alice"]
    assert body["customer"]["email"] == "alice@example.com"


def test_subscription_reflects_status_changes(sb: Sandbox, http: requests.Session) -> None:
    sb.set_subscription_status("sub_sandbox_alice", "ended")
    body = http.get(f"{sb.base_url}/subscriptions/sub_sandbox_alice", headers=bearer(sb)).json()
    assert body["status"] == "ended"
    assert body["end_at"]
    with pytest.raises(ValueError):
        sb.set_subscription_status("sub_sandbox_alice", "paused")


@pytest.mark.parametrize("path", ["/subscriptions/sub_nope", "/customers/cus_nope",
                                  "/events/evt_nope", "/leads/lead_nope", "/no/such/endpoint"])
def test_unknown_things_are_404_envelopes(sb: Sandbox, http: requests.Session, path: str) -> None:
    assert_envelope(http.get(f"{sb.base_url}{path}", headers=bearer(sb)), 404, "NOT_FOUND")


def test_wrong_method_is_405(sb: Sandbox, http: requests.Session) -> None:
    response = http.delete(f"{sb.base_url}/subscriptions/sub_sandbox_alice", headers=bearer(sb))
    assert_envelope(response, 405, "METHOD_NOT_ALLOWED")


def test_seed_data() -> None:
    seeded = Sandbox()
    acme_subs = [s for s in seeded.subscriptions.values() if s["customer"] == "cus_sandbox_acme"]
    assert sorted(s["type"] for s in acme_subs) == ["consumption", "feed_in"]
    assert seeded.customers["cus_sandbox_acme"]["type"] == "company"
    assert not any(s["customer"] == "cus_sandbox_carol" for s in seeded.subscriptions.values())
    assert Sandbox(seed=False).customers == {}
    generated = Sandbox(seed=False).add_customer(email="x@example.com", first_name="X",
                                                 last_name="Y")
    assert re.fullmatch(r"cus_[a-z0-9]{24}", generated["id"])


# -- pagination ---------------------------------------------------------------------------------

def test_pagination_walks_every_page(http: requests.Session) -> None:
    sandbox = Sandbox(seed=False)
    mine = sandbox.add_customer(email="me@example.com", first_name="Me", last_name="Mine")
    other = sandbox.add_customer(email="o@example.com", first_name="O", last_name="Ther")
    expected = []
    for i in range(5):
        expected.append(sandbox.add_subscription(mine["id"], metadata={"n": str(i)})["id"])
        sandbox.add_subscription(other["id"])
    with SandboxServer(sandbox) as server:
        headers = bearer(sandbox)
        seen: list[str] = []
        params: dict[str, str] = {"limit": "2", "filter[customer][eq]": mine["id"]}
        pages = 0
        while True:
            body = http.get(f"{server.url}/subscriptions", params=params, headers=headers).json()
            pages += 1
            assert body["object"] == "list"
            assert all(item["customer"] == mine["id"] for item in body["items"])
            seen += [item["id"] for item in body["items"]]
            if not body["has_more"]:
                assert body["next_page"] is None
                break
            params["cursor"] = body["next_page"]
        # Newest first by created_at (ties, within one millisecond, by id).
        newest_first = sorted(expected, reverse=True,
                              key=lambda i: (sandbox.subscriptions[i]["created_at"], i))
        assert seen == newest_first
        assert pages == 3
        everything = http.get(f"{server.url}/subscriptions", headers=headers).json()
        assert len(everything["items"]) == 10 and not everything["has_more"]


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=abc", "cursor=garbage"])
def test_bad_list_parameters_are_400(sb: Sandbox, http: requests.Session, query: str) -> None:
    response = http.get(f"{sb.base_url}/subscriptions?{query}", headers=bearer(sb))
    assert_envelope(response, 400, "BAD_REQUEST")


@pytest.mark.parametrize("query", [
    "filter[customer][like]=cus_sandbox_alice",     # not an operator Nomos has
    "filter[nope][eq]=x",                           # not a field of subscriptions
    "filter[updated_at][eq]=2026-01-05T10:00:00Z",  # dates take gte/lte only
    "filter[email][eq]=alice@example.com",          # a customer field, not a subscription one
    "filter[created_at][gte]=yesterday",            # not a date
    "filter[created_at][gte]=2026-01-05T10:00:00",  # a date without its timezone
    "filter[customer]=cus_sandbox_alice",           # no operator
    "filter[status][is_null]=maybe",
])
def test_filters_nomos_ignores_give_the_unfiltered_list(sb: Sandbox, http: requests.Session,
                                                        query: str) -> None:
    # API-NOTES, "Filtering lists": silently ignored, the answer is the whole list.
    response = http.get(f"{sb.base_url}/subscriptions?limit=100&{query}", headers=bearer(sb))
    assert response.status_code == 200
    assert sorted(i["id"] for i in response.json()["items"]) == sorted(sb.subscriptions)


def _ids(http: requests.Session, sb: Sandbox, path: str, params: dict[str, str]) -> list[str]:
    response = http.get(f"{sb.base_url}{path}", params={"limit": "100", **params},
                        headers=bearer(sb))
    assert response.status_code == 200
    return sorted(i["id"] for i in response.json()["items"])


# Thirteen lists in a row: the filters, not the limit.
@pytest.mark.sandbox_rate_limit(0)
def test_documented_subscription_filters_apply(sb: Sandbox, http: requests.Session) -> None:
    late = sb.add_subscription("cus_sandbox_carol", plan="pln_other",
                               created_at="2026-03-01T00:00:00.000Z")["id"]
    sb.set_subscription_status(late, "active")  # updated_at: now
    get = lambda **params: _ids(http, sb, "/subscriptions", params)  # noqa: E731
    assert get(**{"filter[updated_at][gte]": "2026-02-01T00:00:00Z"}) == [late]
    assert get(**{"filter[updated_at][lte]": "2026-02-01T00:00:00+01:00"}) == sorted(
        set(sb.subscriptions) - {late})
    assert get(**{"filter[created_at][gte]": "2026-02-01T00:00:00Z"}) == [late]
    assert get(**{"filter[status][eq]": "pending"}) == ["sub_sandbox_acme_feed_in"]
    assert get(**{"filter[status][ne]": "pending"}) == sorted(
        set(sb.subscriptions) - {"sub_sandbox_acme_feed_in"})
    assert get(**{"filter[status][in]": "pending,ended"}) == ["sub_sandbox_acme_feed_in"]
    assert get(**{"filter[plan][eq]": "pln_other"}) == [late]
    assert get(**{"filter[plan][starts_with]": "pln_sandbox_f"}) == ["sub_sandbox_acme_feed_in"]
    assert get(**{"filter[customer][ends_with]": "_acme"}) == [
        "sub_sandbox_acme_consumption", "sub_sandbox_acme_feed_in"]
    assert get(**{"filter[customer][contains]": "carol"}) == [late]
    assert get(**{"filter[customer][eq]": "cus_sandbox_acme",
                  "filter[status][eq]": "active"}) == ["sub_sandbox_acme_consumption"]
    # An ignored filter next to an applied one: only the applied one counts.
    assert get(**{"filter[plan][eq]": "pln_other", "filter[plan][like]": "x"}) == [late]
    assert get(**{"filter[start_at][is_null]": "true"}) == sorted(sb.subscriptions)


def test_customer_list(sb: Sandbox, http: requests.Session) -> None:
    body = http.get(f"{sb.base_url}/customers", params={"filter[email][eq]": "carol@example.com"},
                    headers=bearer(sb)).json()
    assert [c["id"] for c in body["items"]] == ["cus_sandbox_carol"]


# -- magic links and the portal -----------------------------------------------------------------

def mint(sb: Sandbox, http: requests.Session, customer_id: str) -> requests.Response:
    return http.post(f"{sb.base_url}/admin/magic_link", json={"customerId": customer_id},
                     headers=bearer(sb))


def test_magic_link_is_single_use(sb: Sandbox, http: requests.Session) -> None:
    response = mint(sb, http, "cus_sandbox_alice")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "magic_link"
    link = body["link"]
    parts = urlsplit(link)
    query = parse_qs(parts.query)
    assert f"{parts.scheme}://{parts.netloc}" == sb.portal_origin
    assert parts.netloc == f"sandbox.customerportal.localhost:{urlsplit(sb.base_url).port}"
    assert parts.path == "/auth/confirm"
    assert query["type"] == ["magiclink"] and query["next"] == ["/overview"]

    first = http.get(link)
    assert first.status_code == 200
    assert "<title>Nomos sandbox portal</title>" in first.text
    assert "Signed in as alice@example.com (" in first.text
    assert '<span id="customer-id">cus_sandbox_alice</span>' in first.text
    assert '<span id="next-page">/overview</span>' in first.text
    assert list(sb.portal_sessions) == [{"customer_id": "cus_sandbox_alice", "next": "/overview"}]

    second = http.get(link)
    assert second.status_code == 403
    assert "This link has already been used or is invalid" in second.text
    assert len(sb.portal_sessions) == 1
    assert sb.count("GET portal:/auth/confirm") == 2
    assert sb.count("POST /admin/magic_link") == 1


def test_each_mint_is_a_new_token(sb: Sandbox, http: requests.Session) -> None:
    links = {mint(sb, http, "cus_sandbox_alice").json()["link"] for _ in range(3)}
    hashes = {parse_qs(urlsplit(link).query)["token_hash"][0] for link in links}
    assert len(hashes) == 3


def test_deep_link_by_replacing_next_is_escaped(sb: Sandbox, http: requests.Session) -> None:
    link = mint(sb, http, "cus_sandbox_alice").json()["link"]
    deep = link.replace("next=/overview", "next=/invoices/<b>inv_1</b>")
    page = http.get(deep).text
    assert '<span id="next-page">/invoices/&lt;b&gt;inv_1&lt;/b&gt;</span>' in page
    assert sb.portal_sessions[-1]["next"] == "/invoices/<b>inv_1</b>"


def test_customer_without_subscription_gets_a_checkout_link(sb: Sandbox,
                                                            http: requests.Session) -> None:
    # API-NOTES: "the returned link points at the hosted checkout instead".
    link = mint(sb, http, "cus_sandbox_carol").json()["link"]
    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        f"{sb.checkout_origin()}/")
    assert list(parse_qs(parts.query)) == ["token_hash"]
    page = http.get(link)
    assert page.status_code == 200 and 'value="carol@example.com"' in page.text


def test_magic_link_errors(sb: Sandbox, http: requests.Session) -> None:
    assert_envelope(mint(sb, http, "cus_unknown"), 404, "NOT_FOUND")
    response = http.post(f"{sb.base_url}/admin/magic_link", json={}, headers=bearer(sb))
    assert_envelope(response, 400, "BAD_REQUEST")
    assert http.get(f"{sb.portal_origin}/auth/confirm?token_hash=nope&type=magiclink"
                    ).status_code == 403


# -- faults, counts, connections ----------------------------------------------------------------

def test_429_with_retry_after(sb: Sandbox, http: requests.Session) -> None:
    sb.add_fault("GET /subscriptions/{id}", Fault(status=429, retry_after=7))
    url = f"{sb.base_url}/subscriptions/sub_sandbox_alice"
    response = http.get(url, headers=bearer(sb))
    assert_envelope(response, 429, "TOO_MANY_REQUESTS")
    assert response.headers["Retry-After"] == "7"
    after = http.get(url, headers=bearer(sb))
    # The fault's wait was for that answer only; now the rate limit's own says there is room.
    assert after.status_code == 200 and after.headers["Retry-After"] == "0"
    assert sb.count("GET /subscriptions/{id}") == 2


def test_500_n_times_then_ok(sb: Sandbox, http: requests.Session) -> None:
    sb.add_fault("POST /oauth/token", Fault(status=500), times=2)
    statuses = [http.post(f"{sb.base_url}/oauth/token", auth=AUTH, data=FORM).status_code
                for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert sb.count("POST /oauth/token") == 3


def test_wildcard_fault_forever_until_cleared(sb: Sandbox, http: requests.Session) -> None:
    sb.add_fault("*", Fault(status=503), times=None)
    for path in ("/customers/cus_sandbox_alice", "/events/evt_x"):
        assert http.get(f"{sb.base_url}{path}", headers=bearer(sb)).status_code == 503
    # The wildcard is for API traffic; the portal page is not hit by it.
    assert http.get(f"{sb.portal_origin}/auth/confirm").status_code == 403
    sb.clear_faults()
    assert http.get(f"{sb.base_url}/customers/cus_sandbox_alice", headers=bearer(sb)).ok


def test_faults_queue_in_order(sb: Sandbox, http: requests.Session) -> None:
    sb.add_fault("GET /customers/{id}", Fault(status=500))
    sb.add_fault("GET /customers/{id}", Fault(status=429, retry_after=1))
    url = f"{sb.base_url}/customers/cus_sandbox_alice"
    assert [http.get(url, headers=bearer(sb)).status_code for _ in range(3)] == [500, 429, 200]


def test_hang_past_the_read_timeout_then_normal(sb: Sandbox, http: requests.Session) -> None:
    sb.add_fault("GET /customers/{id}", Fault(hang=1.0))
    url = f"{sb.base_url}/customers/cus_sandbox_alice"
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.get(url, headers=bearer(sb), timeout=(2, 0.3))
    assert http.get(url, headers=bearer(sb), timeout=2).status_code == 200


def test_latency(sb: Sandbox, http: requests.Session) -> None:
    sb.add_fault("GET /customers/{id}", Fault(latency=0.3))
    started = time.monotonic()
    assert http.get(f"{sb.base_url}/customers/cus_sandbox_alice", headers=bearer(sb)).ok
    assert time.monotonic() - started >= 0.3


def test_drop_connection(sb: Sandbox, http: requests.Session) -> None:
    sb.add_fault("GET /customers/{id}", Fault(drop_connection=True))
    url = f"{sb.base_url}/customers/cus_sandbox_alice"
    with pytest.raises(requests.exceptions.ConnectionError):
        http.get(url, headers=bearer(sb), timeout=5)
    assert http.get(url, headers=bearer(sb), timeout=5).status_code == 200
    assert sb.request_log[0]["status"] is None


# A hundred calls in a row: one connection, not the limit.
@pytest.mark.sandbox_rate_limit(0)
def test_one_keep_alive_connection_for_100_calls(sb: Sandbox, http: requests.Session) -> None:
    sb.reset_counts()
    token = http.post(f"{sb.base_url}/oauth/token", auth=AUTH, data=FORM).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    for i in range(99):
        path = "/subscriptions/sub_sandbox_alice" if i % 3 else "/subscriptions/sub_missing"
        http.get(f"{sb.base_url}{path}", headers=headers)
    assert sum(sb.calls.values()) == 100
    assert sb.connections == 1


# A hundred requests at once: serving them concurrently, not the limit.
@pytest.mark.sandbox_rate_limit(0)
def test_concurrent_requests(sb: Sandbox) -> None:
    def one(_: int) -> int:
        with requests.Session() as session:
            token = session.post(f"{sb.base_url}/oauth/token", auth=AUTH,
                                 data=FORM).json()["access_token"]
            return session.get(f"{sb.base_url}/subscriptions/sub_sandbox_alice", timeout=10,
                               headers={"Authorization": f"Bearer {token}"}).status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(one, range(50)))
    assert statuses == [200] * 50
    assert sb.count("POST /oauth/token") == 50
    assert sb.count("GET /subscriptions/{id}") == 50
    assert len(sb.request_log) == 100


def test_request_log_records_exchanges(sb: Sandbox, http: requests.Session) -> None:
    http.post(f"{sb.base_url}/admin/magic_link", json={"customerId": "cus_sandbox_alice"},
              headers={**bearer(sb), "X-API-Version": "2026-05-27.curie"})
    exchange = sb.request_log[-1]
    assert exchange["method"] == "POST" and exchange["path"] == "/admin/magic_link"
    assert json.loads(exchange["body"]) == {"customerId": "cus_sandbox_alice"}
    assert exchange["headers"]["x-api-version"] == "2026-05-27.curie"
    assert exchange["status"] == 200
    assert exchange["response_headers"]["Content-Type"] == "application/json"
    assert json.loads(exchange["response_body"])["object"] == "magic_link"
    sb.reset_counts()
    assert sb.calls == {} and list(sb.request_log) == []


def test_records_are_rings_that_keep_the_newest(sb: Sandbox, http: requests.Session) -> None:
    sb.request_log = deque(maxlen=3)
    for n in range(5):
        http.get(f"{sb.base_url}/subscriptions/sub_sandbox_alice?n={n}", headers=bearer(sb))
    assert len(sb.request_log) == 3
    assert sb.request_log[-1]["query"] == "n=4"
    assert sb.count("GET /subscriptions/{id}") == 5  # counting is not bounded by the ring


def test_magic_links_are_forgotten_once_used_or_expired(sb: Sandbox) -> None:
    used = sb.mint_magic_link("cus_sandbox_alice", sb.base_url)
    token = used.split("token_hash=")[1].split("&")[0]
    assert sb.redeem_magic_link(token, "/overview") is not None
    assert sb.redeem_magic_link(token, "/overview") is None  # single use, as before
    assert sb._magic_links == {}
    sb.magic_link_ttl = 0
    sb.mint_magic_link("cus_sandbox_alice", sb.base_url)
    sb.mint_magic_link("cus_sandbox_alice", sb.base_url)  # minting sweeps the expired one
    assert len(sb._magic_links) == 1


def test_reset_frees_every_record(sb: Sandbox, http: requests.Session) -> None:
    link = sb.mint_magic_link("cus_sandbox_alice", sb.base_url)
    sb.redeem_magic_link(link.split("token_hash=")[1].split("&")[0], "/overview")
    sb.mint_magic_link("cus_sandbox_alice", sb.base_url)
    http.get(f"{sb.base_url}/subscriptions/sub_sandbox_alice", headers=bearer(sb))
    assert http.post(f"{sb.base_url}/_sandbox/reset").status_code == 200
    assert (len(sb.request_log), len(sb.portal_sessions), len(sb.webhook_deliveries)) == (0, 0, 0)
    assert sb._magic_links == {} and sb.calls == {}
    assert "sub_sandbox_alice" in sb.subscriptions  # the data stays


# -- webhooks -----------------------------------------------------------------------------------

def test_send_webhook_is_signed_over_the_raw_body(sb: Sandbox, http: requests.Session,
                                                  receiver: Receiver) -> None:
    event = sb.send_webhook(receiver.url, "subscription.activated", secret="whsec_x",
                            context={"subscription": "sub_sandbox_alice"})
    assert re.fullmatch(r"evt_[a-z0-9]{24}", event["id"])
    ((headers, body),) = receiver.received
    assert headers["Content-Type"] == "application/json"
    assert verify_signature(body, headers["X-Nomos-Signature"], ["whsec_other", "whsec_x"]) == 1
    assert json.loads(body) == event
    assert set(event) == {"id", "timestamp", "topic", "context"}
    assert sb.webhook_deliveries[-1]["status"] == 200
    fetched = http.get(f"{sb.base_url}/events/{event['id']}", headers=bearer(sb)).json()
    assert fetched == event


def test_webhook_duplicates_and_old_timestamps(sb: Sandbox, receiver: Receiver) -> None:
    old = int(time.time()) - 3600
    event = sb.send_webhook(receiver.url, "test.event", secret="whsec_x", event_id="evt_fixed",
                            timestamp=old, duplicate=3)
    assert event["context"] == {}
    assert len(receiver.received) == 3
    assert {json.loads(body)["id"] for _, body in receiver.received} == {"evt_fixed"}
    header = receiver.received[0][0]["X-Nomos-Signature"]
    assert header.startswith(f"t={old},")
    verify_signature(receiver.received[0][1], header, ["whsec_x"], now=old)
    # Re-sending a stored event id is a retry: same envelope.
    again = sb.send_webhook(receiver.url, "ignored", secret="whsec_x", event_id="evt_fixed")
    assert again == event


def test_webhook_delivery_failures_are_recorded(sb: Sandbox) -> None:
    failing = Receiver(status=500)
    try:
        sb.send_webhook(failing.url, "test.event", secret="s")
    finally:
        failing.close()
    sb.send_webhook(failing.url, "test.event", secret="s", timeout=2)
    assert sb.webhook_deliveries[0]["status"] == 500
    assert sb.webhook_deliveries[1]["status"] is None
    assert "ConnectionError" in sb.webhook_deliveries[1]["error"]


# -- leads --------------------------------------------------------------------------------------

LEAD = {"plan": "pln_sandbox_home", "address": {"zip": "10115"},
        "meter": {"estimated_usage": 2500}, "customer": {"email": "new@example.com",
                                                        "first_name": "New", "last_name": "Lead"},
        "metadata": {"django_user_id": "42"}}


def test_lead_checkout_and_convert(sb: Sandbox, http: requests.Session,
                                   receiver: Receiver) -> None:
    lead = http.post(f"{sb.base_url}/leads", json=LEAD, headers=bearer(sb)).json()
    assert lead["object"] == "lead"
    assert lead["link"] == f"{sb.checkout_origin()}/?id={lead['id']}"
    assert lead["metadata"] == {"django_user_id": "42"}
    assert sb.leads[lead["id"]]["subscription"] is None
    page = http.get(lead["link"])
    assert page.status_code == 200 and lead["id"] in page.text

    sub = http.post(f"{sb.base_url}/_sandbox/leads/{lead['id']}/convert").json()
    # The lead's metadata is the lead's: Nomos does not copy it onto the subscription.
    assert sub["metadata"] is None
    assert sb.leads[lead["id"]]["metadata"] == {"django_user_id": "42"}
    assert sub["customer"]["email"] == "new@example.com"
    assert sub["status"] == "pending"
    assert sb.leads[lead["id"]]["subscription"] == sub["id"]
    assert sb.lead_of(sub["id"]) == lead["id"]

    event = sb.send_webhook(receiver.url, "subscription.created", secret="s",
                            context={"subscription": sub["id"]})
    assert event["context"] == {"subscription": sub["id"], "lead": lead["id"]}
    fetched = http.get(f"{sb.base_url}/leads/{lead['id']}", headers=bearer(sb)).json()
    assert fetched["subscription"] == sub["id"]
    again = http.post(f"{sb.base_url}/_sandbox/leads/{lead['id']}/convert")
    assert_envelope(again, 409, "CONFLICT")


@pytest.mark.parametrize(("change", "field"), [
    ({"plan": None}, "plan"),
    ({"address": {}}, "address.zip"),
    ({"address": {"zip": "101"}}, "address.zip"),
    ({"meter": {}}, "meter.estimated_usage"),
    ({"meter": {"estimated_usage": 50}}, "meter.estimated_usage"),
    ({"metadata": {"n": 1}}, "metadata"),
])
def test_invalid_leads_are_400(sb: Sandbox, http: requests.Session, change: dict[str, Any],
                               field: str) -> None:
    payload = {k: v for k, v in {**LEAD, **change}.items() if v is not None}
    response = http.post(f"{sb.base_url}/leads", json=payload, headers=bearer(sb))
    body = assert_envelope(response, 400, "BAD_REQUEST")
    assert [e["field"] for e in body["errors"]] == [field]


# -- control API --------------------------------------------------------------------------------

def test_control_api(sb: Sandbox, http: requests.Session, receiver: Receiver) -> None:
    control = f"{sb.base_url}/_sandbox"
    assert http.post(f"{control}/faults", json={"key": "GET /customers/{id}", "status": 429,
                                                "retry_after": 2, "times": 1}).ok
    response = http.get(f"{sb.base_url}/customers/cus_sandbox_alice", headers=bearer(sb))
    assert response.status_code == 429 and response.headers["Retry-After"] == "2"
    assert http.get(f"{control}/calls").json() == {"GET /customers/{id}": 1}
    assert http.post(f"{control}/faults", json={"key": "*", "bogus": 1}).status_code == 400

    sent = http.post(f"{control}/webhooks", json={
        "url": receiver.url, "topic": "subscription.ended", "secret": "s",
        "context": {"subscription": "sub_sandbox_alice"}}).json()
    assert sent["deliveries"] == [{"status": 200, "error": None}]
    assert json.loads(receiver.received[0][1]) == sent["event"]

    state = http.get(f"{control}/state").json()
    assert state["subscriptions"]["sub_sandbox_alice"]["customer"]["id"] == "cus_sandbox_alice"
    assert "cus_sandbox_carol" in state["customers"]

    created = http.post(f"{control}/customers", json={"email": "z@example.com"}).json()
    sub = http.post(f"{control}/subscriptions", json={"customer_id": created["id"],
                                                      "status": "active"}).json()
    assert sub["customer"]["id"] == created["id"]
    ended = http.post(f"{control}/subscriptions/{sub['id']}/status", json={"status": "ended"})
    assert ended.json()["status"] == "ended"

    assert http.post(f"{control}/reset").ok
    assert http.get(f"{control}/calls").json() == {}
    assert sb.faults.pending() == {}


# -- in-process and CLI -------------------------------------------------------------------------

def test_the_sandbox_and_its_webhooks_import_without_django() -> None:
    # The package docstring's promise: the standard library and requests, nothing else.
    code = ("import sys, nomos_billing.sandbox, nomos_billing.sandbox.__main__; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'django'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("secret", ["whsec_test", "whsec_ünïcode"])
def test_the_sandboxs_own_signer_is_what_our_verifier_accepts(secret: str) -> None:
    body = b'{"id":"evt_1","topic":"subscription.created"}'
    header = sandbox_webhooks.sign_payload(body, secret, 1_700_000_000)
    assert header == sign_payload(body, secret, 1_700_000_000)
    verify_signature(body, header, [secret], tolerance=300, now=1_700_000_010)


def test_wsgi_app_in_process_without_a_server() -> None:
    from wsgiref.util import setup_testing_defaults

    sandbox = Sandbox()
    body = json.dumps({"customerId": "cus_sandbox_alice"}).encode()
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/admin/magic_link",
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
        "HTTP_AUTHORIZATION": f"Bearer {sandbox.issue_token()}", "wsgi.input": BytesIO(body),
        "HTTP_HOST": "nomos.test",
    }
    setup_testing_defaults(environ)
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        captured.update(status=status, headers=dict(headers))

    chunks = SandboxApp(sandbox)(environ, start_response)
    assert captured["status"] == "200 OK"
    link = json.loads(b"".join(chunks))["link"]
    assert link.startswith("http://sandbox.customerportal.localhost/auth/confirm?token_hash=")
    assert sandbox.base_url is None
    assert sandbox.connections == 0


def test_server_stops_cleanly_and_forgets_its_url() -> None:
    sandbox = Sandbox()
    server = SandboxServer(sandbox)
    with server:
        url = server.url
        session = requests.Session()
        session.get(f"{url}/customers/x")  # leave an idle keep-alive connection open
    assert sandbox.base_url is None
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{url}/customers/x", timeout=2)
    session.close()


def test_command_line_server() -> None:
    # The context manager closes stdout/stderr (a ResourceWarning otherwise) and waits.
    with subprocess.Popen(
        [sys.executable, "-m", "nomos_billing.sandbox", "--port", "0", "--client-id", "cli",
         "--client-secret", "cli-secret"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            match = re.search(r"http://127\.0\.0\.1:\d+", first)
            assert match, first
            url = match.group(0)
            response = requests.post(f"{url}/oauth/token", auth=("cli", "cli-secret"), data=FORM)
            assert response.status_code == 200
            assert requests.get(f"{url}/_sandbox/calls").json() == {"POST /oauth/token": 1}
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


# -- fault: a new subscription not readable yet ---------------------------------------------------

def test_new_subscription_is_unreadable_for_its_first_seconds(sb: Sandbox,
                                                              http: requests.Session) -> None:
    seeded = f"{sb.base_url}/subscriptions/sub_sandbox_alice"
    answer = http.post(f"{sb.base_url}/_sandbox/subscriptions/unreadable", json={"seconds": 3600})
    assert answer.json() == {"unreadable_for": 3600.0}
    sub = sb.add_subscription("cus_sandbox_carol")
    url = f"{sb.base_url}/subscriptions/{sub['id']}"

    assert http.get(url, headers=bearer(sb)).status_code == 404
    listed = http.get(f"{sb.base_url}/subscriptions", params={"limit": 100},
                      headers=bearer(sb)).json()
    assert sub["id"] not in [item["id"] for item in listed["items"]]
    assert http.get(seeded, headers=bearer(sb)).status_code == 200  # older ones stay readable

    made = http.post(f"{sb.base_url}/_sandbox/subscriptions/{sub['id']}/readable")
    assert made.status_code == 200
    assert http.get(url, headers=bearer(sb)).json()["id"] == sub["id"]


def test_unreadable_window_ends_by_itself(sb: Sandbox, http: requests.Session) -> None:
    sb.unreadable_for = 0.01
    sub = sb.add_subscription("cus_sandbox_carol")
    time.sleep(0.05)
    assert http.get(f"{sb.base_url}/subscriptions/{sub['id']}",
                    headers=bearer(sb)).status_code == 200


@pytest.mark.parametrize("body", [{}, {"seconds": -1}, {"seconds": "5"}, {"seconds": True}])
def test_unreadable_control_refuses_bad_input(sb: Sandbox, http: requests.Session,
                                              body: dict[str, Any]) -> None:
    answer = http.post(f"{sb.base_url}/_sandbox/subscriptions/unreadable", json=body)
    assert answer.status_code == 400


# -- Nomos' clock (--clock-skew) ------------------------------------------------------------------


def _stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _off_by(moment: datetime, seconds: float) -> bool:
    """True when ``moment`` is ``seconds`` from our clock now, give or take a few seconds."""
    return abs((moment - datetime.now(timezone.utc)).total_seconds() - seconds) < 5


@pytest.mark.parametrize("skew", [-900, 900])
def test_clock_skew_shifts_every_timestamp_nomos_writes(http: requests.Session,
                                                        skew: int) -> None:
    sandbox = Sandbox(clock_skew=skew)
    with SandboxServer(sandbox):
        base = sandbox.base_url
        customer = http.post(f"{base}/_sandbox/customers", json={"email": "c@example.com"}).json()
        sub = http.post(f"{base}/_sandbox/subscriptions",
                        json={"customer_id": customer["id"]}).json()
        changed = http.post(f"{base}/_sandbox/subscriptions/{sub['id']}/status",
                            json={"status": "active"}).json()
        event = http.post(f"{base}/_sandbox/events",
                          json={"topic": "subscription.activated", "subscription": sub["id"]})
        lead = http.post(f"{base}/leads", headers=bearer(sandbox),
                         json={"plan": "pln_sandbox_home", "address": {"zip": "10115"},
                               "meter": {"estimated_usage": 2500}})
        for stamp in (customer["created_at"], sub["created_at"], changed["updated_at"],
                      changed["start_at"], event.json()["timestamp"], lead.json()["created_at"]):
            assert _off_by(_stamp(stamp), skew), stamp
        # The Date header, once per answer, API and control alike.
        for response in (lead, event):
            assert len(response.raw.headers.getlist("Date")) == 1
            assert _off_by(parsedate_to_datetime(response.headers["Date"]), skew)


def test_clock_control_api(sb: Sandbox, http: requests.Session) -> None:
    assert http.get(f"{sb.base_url}/_sandbox/clock").json()["clock_skew"] == 0
    answer = http.post(f"{sb.base_url}/_sandbox/clock", json={"skew": -900}).json()
    assert answer["clock_skew"] == -900
    assert _off_by(_stamp(answer["now"]), -900)
    assert sb.clock_skew == -900
    assert _off_by(sb.now(), -900)
    date = http.get(f"{sb.base_url}/customers/x").headers["Date"]
    assert _off_by(parsedate_to_datetime(date), -900)


@pytest.mark.parametrize("body", [{}, {"skew": "60"}, {"skew": True}, {"skew": float("nan")},
                                  {"skew": 60, "other": 1}])
def test_clock_control_refuses_bad_input(sb: Sandbox, http: requests.Session,
                                         body: dict[str, Any]) -> None:
    answer = http.post(f"{sb.base_url}/_sandbox/clock", data=json.dumps(body),
                       headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert sb.clock_skew == 0


def test_clock_skew_on_the_command_line() -> None:
    from nomos_billing.sandbox.__main__ import banner, build_parser, configure

    args = build_parser().parse_args(["--clock-skew", "-900"])
    sandbox, _ = configure(args)
    assert sandbox.clock_skew == -900
    server = SimpleNamespace(url="http://127.0.0.1:1")
    assert "Nomos' clock: -900 s from ours" in banner(sandbox, server, args, None)
    assert "s from ours" not in banner(configure(build_parser().parse_args([]))[0], server,
                                       args, None)


def test_a_dropped_cursor_says_more_without_naming_where(sb: Sandbox,
                                                         http: requests.Session) -> None:
    sb.add_fault("GET /customers", Fault(drop_cursor=True), times=1)
    page = http.get(f"{sb.base_url}/customers", params={"limit": 100}, headers=bearer(sb)).json()
    assert (page["has_more"], page["next_page"]) == (True, None)
    assert len(page["items"]) == len(sb.customers)
    # Not a list: answered as it is.
    sb.add_fault("GET /customers/{id}", Fault(drop_cursor=True), times=1)
    one = http.get(f"{sb.base_url}/customers/cus_sandbox_alice", headers=bearer(sb)).json()
    assert "has_more" not in one
