"""Every response the sandbox gives, success and error, validates against the Nomos OpenAPI
document (and the well-formed requests of these scenarios validate too).

Needs the document: set NOMOS_OPENAPI_SPEC to its path (.ci/run does). The package never reads
it; only this test does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import pytest
import requests

from nomos_billing.sandbox import Fault, Sandbox, SandboxServer

SPEC_PATH = os.environ.get("NOMOS_OPENAPI_SPEC")
if not SPEC_PATH:
    pytest.skip("NOMOS_OPENAPI_SPEC not set: point it at openapi-2026-05-27.curie.json to run "
                "the sandbox contract tests", allow_module_level=True)

from openapi_core import OpenAPI  # noqa: E402 - only needed when the spec is given
from openapi_core.exceptions import OpenAPIError  # noqa: E402

from tests.contract import (  # noqa: E402
    KNOWN_DIFFERENCES,
    TOKEN_FORM_BODY,
    describe,
    load_spec,
    validate_exchange,
    validate_request,
)

pytestmark = pytest.mark.live

AUTH = ("sandbox-client", "sandbox-secret")
LEAD = {"plan": "pln_sandbox_home", "address": {"zip": "10115", "city": "Berlin"},
        "meter": {"estimated_usage": 2500, "type": "smart"},
        "customer": {"type": "person", "first_name": "Lea", "last_name": "Lead",
                     "email": "lea@example.com"},
        "metadata": {"django_user_id": "7"}}


@pytest.fixture(scope="module")
def spec() -> OpenAPI:
    return load_spec(SPEC_PATH)


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    # The scenarios go as fast as they can; the limit is a scenario of its own (rate_limit).
    sandbox = Sandbox(rate_limit=0)
    with SandboxServer(sandbox):
        yield sandbox


class Api:
    """A plain requests client for the scenarios, marking requests that are meant to be bad."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.session = requests.Session()
        self.bad_requests: set[int] = set()  # indexes into sb.request_log
        self.token = self.session.post(f"{sb.base_url}/oauth/token", auth=AUTH,
                                       data={"grant_type": "client_credentials"}
                                       ).json()["access_token"]

    def call(self, method: str, path: str, *, bad: bool = False, token: str | None = None,
             **kwargs: object) -> requests.Response:
        headers = {"Authorization": f"Bearer {token or self.token}",
                   "X-API-Version": "2026-05-27.curie"}
        response = self.session.request(method, f"{self.sb.base_url}{path}", headers=headers,
                                        timeout=10, **kwargs)  # type: ignore[arg-type]
        if bad:
            self.bad_requests.add(len(self.sb.request_log) - 1)
        return response


def oauth(api: Api) -> None:
    url = f"{api.sb.base_url}/oauth/token"
    assert api.session.post(url, auth=AUTH, json={"grant_type": "client_credentials"}).ok
    assert api.session.post(url, auth=("nope", "nope"),
                            data={"grant_type": "client_credentials"}).status_code == 401
    api.session.post(url, auth=AUTH, data={"grant_type": "password"})
    api.bad_requests.add(len(api.sb.request_log) - 1)  # "password" is outside the enum


def subscriptions(api: Api) -> None:
    for sub_id in api.sb.subscriptions:
        assert api.call("GET", f"/subscriptions/{sub_id}").ok
    assert api.call("GET", "/subscriptions/sub_missing").status_code == 404
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        body = api.call("GET", "/subscriptions", params=params).json()
        if not body["has_more"]:
            break
        cursor = body["next_page"]
    assert api.call("GET", "/subscriptions",
                    params={"filter[customer][eq]": "cus_sandbox_acme"}).ok
    assert api.call("GET", "/subscriptions", params={"limit": "0"}, bad=True).status_code == 400


def customers(api: Api) -> None:
    for customer_id in api.sb.customers:
        assert api.call("GET", f"/customers/{customer_id}").ok
    assert api.call("GET", "/customers/cus_missing").status_code == 404
    assert api.call("GET", "/customers", params={"limit": "2"}).ok


def events(api: Api) -> None:
    sb = api.sb
    lead = sb.create_lead(LEAD, sb.base_url or "")
    sub = sb.convert_lead(lead["id"])
    built = [
        sb.build_event("subscription.created", {"subscription": sub["id"]}),
        sb.build_event("subscription.activated", {"subscription": "sub_sandbox_alice"}),
        sb.build_event("invoice.paid", {"invoice": "inv_1", "subscription": "sub_sandbox_alice"}),
        sb.build_event("meter_order.created", {"meter_order": "mo_1",
                                               "subscription": "sub_sandbox_alice"}),
    ]
    assert built[0]["context"]["lead"] == lead["id"]
    for event in built:
        assert api.call("GET", f"/events/{event['id']}").json() == event
    assert api.call("GET", "/events/evt_missing").status_code == 404


def magic_link(api: Api) -> None:
    for customer_id in ("cus_sandbox_alice", "cus_sandbox_carol"):
        assert api.call("POST", "/admin/magic_link", json={"customerId": customer_id}).ok
    assert api.call("POST", "/admin/magic_link",
                    json={"customerId": "cus_missing"}).status_code == 404
    assert api.call("POST", "/admin/magic_link", json={}, bad=True).status_code == 400
    read_only = api.sb.issue_token(scope="read:*")
    assert api.call("POST", "/admin/magic_link", token=read_only,
                    json={"customerId": "cus_sandbox_alice"}).status_code == 403


def leads(api: Api) -> None:
    lead = api.call("POST", "/leads", json=LEAD).json()
    assert api.call("GET", f"/leads/{lead['id']}").ok
    minimal = {"plan": "pln_x", "address": {"zip": "10115"}, "meter": {"estimated_usage": 100}}
    assert api.call("POST", "/leads", json=minimal).ok
    assert api.call("POST", "/leads", json={"plan": "pln_x"}, bad=True).status_code == 400


def auth_and_faults(api: Api) -> None:
    assert api.call("GET", "/customers/cus_sandbox_alice", token="bogus").status_code == 401
    api.sb.expire_tokens()
    assert api.call("GET", "/subscriptions/sub_sandbox_alice").status_code == 401
    api.token = api.sb.issue_token()
    for status in (400, 403, 404, 409, 422, 429, 500):
        api.sb.add_fault("GET /subscriptions/{id}", Fault(status=status, retry_after=1))
        assert api.call("GET", "/subscriptions/sub_sandbox_alice").status_code == status
    api.sb.add_fault("*", Fault(status=429, retry_after=2), times=3)
    for path in ("/customers/cus_sandbox_alice", "/events/evt_x"):
        assert api.call("GET", path).status_code == 429
    assert api.session.post(f"{api.sb.base_url}/oauth/token", auth=AUTH,
                            data={"grant_type": "client_credentials"}).status_code == 429


def filters_and_checkout(api: Api) -> None:
    sb = api.sb
    checkout = requests.post(f"{sb.checkout_origin()}/", allow_redirects=False,
                             data={"zip": "10115", "usage": "2500", "email": "c@example.com",
                                   "first_name": "C", "last_name": "O", "metadata.k": "v"})
    assert checkout.status_code == 303
    for sub_id in sb.subscriptions:
        assert api.call("GET", f"/subscriptions/{sub_id}").ok
    for params in ({"filter[updated_at][gte]": "2026-02-01T00:00:00Z"},
                   {"filter[created_at][lte]": "2026-02-01T00:00:00+01:00"},
                   {"filter[status][in]": "pending,active"}, {"filter[plan][ne]": "x"},
                   {"filter[customer][starts_with]": "cus_"}, {"filter[nope][eq]": "x"},
                   {"filter[customer][like]": "x"}):
        assert api.call("GET", "/subscriptions", params=params).ok
    assert api.call("GET", "/customers", params={"filter[email][ends_with]": "example.com",
                                                 "filter[type][eq]": "person"}).ok
    lead = {**LEAD, "address": {"zip": "00000"}}
    refused = api.call("POST", "/leads", json=lead)
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["code"] == "unserviceable_zip"


def rate_limit(api: Api) -> None:
    sb = api.sb
    sb.rate_limiter.set_limit(1)
    statuses = [api.call("GET", "/subscriptions/sub_sandbox_alice").status_code
                for _ in range(2)]
    arrivals = list(sb.rate_limiter.arrivals)
    # Over the limit when the two arrived within a second (the sandbox's clock says).
    assert statuses == [200, 429 if arrivals[1] - arrivals[0] < 1.0 else 200]
    assert sb.request_log[-1]["response_headers"]["ratelimit-limit"] == "1"


SCENARIOS: dict[str, Callable[[Api], None]] = {
    f.__name__: f for f in (oauth, subscriptions, customers, events, magic_link, leads,
                            auth_and_faults, filters_and_checkout, rate_limit)
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_sandbox_speaks_the_contract(spec: OpenAPI, sb: Sandbox, name: str) -> None:
    api = Api(sb)
    SCENARIOS[name](api)
    exchanges = [e for e in sb.request_log if e["kind"] == "api"]
    assert len(exchanges) > 2
    failures = []
    for index, exchange in enumerate(sb.request_log):
        if exchange["kind"] != "api":
            continue
        try:
            validate_exchange(spec, exchange)
            if index not in api.bad_requests:
                validate_request(spec, exchange)
        except Exception as exc:  # collect them all for one readable report
            cause = exc.__cause__ or exc
            failures.append(f"{describe(exchange)}: {type(exc).__name__}: {cause}"[:600])
    assert not failures, "\n".join(failures)


def test_the_helper_rejects_what_breaks_the_contract(spec: OpenAPI, sb: Sandbox) -> None:
    api = Api(sb)
    api.call("GET", "/subscriptions/sub_sandbox_alice")
    good = sb.request_log[-1]
    validate_exchange(spec, good)
    broken = json.loads(good["response_body"])
    broken["status"] = "paused"
    with pytest.raises(OpenAPIError):
        validate_exchange(spec, {**good, "response_body": json.dumps(broken).encode()})
    with pytest.raises(OpenAPIError):
        validate_request(spec, {**good, "headers": {}})  # no bearer token


def test_form_token_request_is_the_one_named_difference(spec: OpenAPI, sb: Sandbox) -> None:
    requests.post(f"{sb.base_url}/oauth/token", auth=AUTH,
                  data={"grant_type": "client_credentials"})
    form_request = sb.request_log[-1]
    assert form_request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    # Validated as sent: the document has no form body, so this is the named difference.
    assert validate_request(spec, form_request) == TOKEN_FORM_BODY
    assert TOKEN_FORM_BODY in KNOWN_DIFFERENCES
    # Its fields are still checked against the document's body schema...
    with pytest.raises(Exception, match="password"):
        validate_request(spec, {**form_request, "body": b"grant_type=password"})
    # ... and a form anywhere else is not excused.
    leads = {**form_request, "path": "/leads",
             "headers": {**form_request["headers"], "Authorization": "Bearer x"}}
    with pytest.raises(OpenAPIError):
        validate_request(spec, leads)
    requests.post(f"{sb.base_url}/oauth/token", auth=AUTH,
                  json={"grant_type": "client_credentials"})
    assert validate_request(spec, sb.request_log[-1]) is None
