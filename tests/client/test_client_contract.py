"""Contract: every request our client sends, and every response the sandbox gives it, validates
against the provider's OpenAPI document (``NOMOS_OPENAPI_SPEC``)."""

from __future__ import annotations

import os

import pytest

if not os.environ.get("NOMOS_OPENAPI_SPEC"):
    pytest.skip(
        "NOMOS_OPENAPI_SPEC not set: point it at the Nomos OpenAPI document to run the contract "
        "tests (.ci/run does)",
        allow_module_level=True,
    )

from nomos_billing.client import get_client
from nomos_billing.exceptions import NomosAPIError
from nomos_billing.sandbox import Fault
from tests.contract import (
    TOKEN_FORM_BODY,
    describe,
    load_spec,
    validate_exchange,
    validate_request,
)

pytestmark = pytest.mark.django_db(databases=[])


@pytest.fixture(scope="module")
def spec():
    return load_spec()


def exercise_client(nomos) -> None:
    client = get_client()
    client.get_subscription("sub_sandbox_alice")
    client.get_customer("cus_sandbox_alice")
    client.create_magic_link("cus_sandbox_alice")
    list(client.iter_subscriptions(limit=2))
    list(client.iter_subscriptions(limit=100, customer="cus_sandbox_alice"))
    event = nomos.build_event("subscription.created", {"subscription": "sub_sandbox_alice"})
    client.get_event(event["id"])
    client.create_lead({
        "plan": "pln_sandbox_basic",
        "address": {"zip": "10115"},
        "meter": {"estimated_usage": 2500},
        "customer": {"email": "lead@example.com", "first_name": "Lea", "last_name": "Lead"},
        "metadata": {"django_user_id": "7"},
    })
    list(client.iter_subscriptions(updated_since="2026-01-01T00:00:00Z", limit=5))
    list(client.iter_customers(limit=5))
    with pytest.raises(NomosAPIError) as refused:
        client.create_lead({"plan": "pln_sandbox_basic", "address": {"zip": "00000"},
                            "meter": {"estimated_usage": 2500}})
    assert refused.value.errors[0]["code"] == "unserviceable_zip"
    for call in (lambda: client.get_subscription("sub_missing"),
                 lambda: client.create_magic_link("cus_missing")):
        with pytest.raises(NomosAPIError):
            call()
    nomos.add_fault("GET /customers/{id}", Fault(status=500), times=None)
    with pytest.raises(NomosAPIError):
        client.get_customer("cus_sandbox_alice")


# Every call the client makes, back to back: their shapes, not pacing.
@pytest.mark.sandbox_rate_limit(0)
def test_every_request_the_client_sends_validates(nomos, spec):
    exercise_client(nomos)
    exchanges = [e for e in nomos.request_log if not e["path"].startswith("/_sandbox")]
    assert len(exchanges) >= 10
    failures = []
    for exchange in exchanges:
        try:
            validate_request(spec, exchange)
        except Exception as exc:
            failures.append(f"{describe(exchange)}: {exc}")
    assert failures == []


# Every call the client makes, back to back: their shapes, not pacing.
@pytest.mark.sandbox_rate_limit(0)
def test_every_response_the_client_receives_validates(nomos, spec):
    exercise_client(nomos)
    failures = []
    for exchange in nomos.request_log:
        try:
            validate_exchange(spec, exchange)
        except Exception as exc:
            failures.append(f"{describe(exchange)}: {exc}")
    assert failures == []


def test_the_json_fallback_token_request_validates_without_any_difference(nomos, spec):
    nomos.token_content_types = {"application/json"}
    get_client().get_customer("cus_sandbox_alice")
    form, as_json = [e for e in nomos.request_log if e["path"] == "/oauth/token"]
    assert validate_request(spec, form) == TOKEN_FORM_BODY
    assert validate_request(spec, as_json) is None
