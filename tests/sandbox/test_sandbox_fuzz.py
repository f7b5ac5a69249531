"""Schemathesis holds the sandbox to the provider's OpenAPI document: every operation of the
document that the sandbox serves is called with generated requests, valid and invalid, against
a live sandbox on loopback, and every answer's status and body must conform to the document.

The differences that remain are in ``KNOWN_DIFFERENCES`` below, each with its reason; any other
failure fails the run. Runs where the document is (``NOMOS_OPENAPI_SPEC``, set by .ci/run and
tests/conftest.py from ../shared), a few seconds per operation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nomos_billing.sandbox import Sandbox, SandboxServer, api

SPEC = os.environ.get("NOMOS_OPENAPI_SPEC", "")
if not SPEC or not Path(SPEC).is_file():
    pytest.skip("the Nomos OpenAPI document is absent (NOMOS_OPENAPI_SPEC, ../shared/nomos)",
                allow_module_level=True)

schemathesis = pytest.importorskip("schemathesis", reason="pip install -e '.[test]'")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

pytestmark = pytest.mark.live

#: Every difference between the sandbox's answers and the document that stays, with its
#: reason: the check it excuses, per operation ("METHOD /template"; "*" for all of them).
KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {
    **{
        (f"GET {path}", "positive_data_acceptance"): "a cursor is opaque: a string the server "
        "never issued is refused with 400 (the document types it as any string), and so is a "
        "fractional limit (typed as a number)"
        for path in ("/subscriptions", "/customers", "/leads")
    },
    **{
        (f"GET {path}", "negative_data_rejection"): "Nomos answers a list with parameters it "
        "does not know (an unknown filter field or operator is silently ignored, API-NOTES "
        "'Filtering lists'), so an extra query parameter is answered, not refused"
        for path in ("/subscriptions", "/customers", "/leads")
    },
    ("POST /leads", "positive_data_acceptance"): "InsertLead's customer is an anyOf whose "
    "branches constrain no type, so the document lets any JSON through; the sandbox wants an "
    "object (or null), as the provider's guides describe",
    ("POST /oauth/token", "negative_data_rejection"): "the sandbox reads grant_type alone; the "
    "other fields belong to grants it does not offer (client_id, code, code_verifier, scope, "
    "refresh_token) and are ignored whatever their type",
    ("POST /oauth/token", "positive_data_acceptance"): "the sandbox grants client_credentials "
    "only, the integration's grant; authorization_code and refresh_token answer 400",
    ("POST /leads", "negative_data_rejection"): "the sandbox validates the fields the "
    "integration sends (plan, address.zip, meter.estimated_usage, customer, metadata), not every "
    "optional field of InsertLead (street, payment_method, change_reason, ...)",
}

#: Generated examples per operation: enough to reach every status the sandbox answers with,
#: few enough that the whole run takes seconds.
EXAMPLES = int(os.environ.get("NOMOS_FUZZ_EXAMPLES", "100"))

SERVED = {(route.method, route.template) for route in api.ROUTES}
schema = schemathesis.openapi.from_path(SPEC).include(
    lambda ctx: (ctx.operation.method.upper(), ctx.operation.path) in SERVED
)

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    checks.positive_data_acceptance,
    checks.ignored_auth,
    checks.unsupported_method,
]


@pytest.fixture(scope="module")
def nomos_live() -> Iterator[Sandbox]:
    # Generated requests as fast as they go: the shapes, not the pacing (the limit's own 429 is
    # checked against the document in test_sandbox_contract.py).
    sandbox = Sandbox(client_id="fuzz-client", client_secret="fuzz-secret", rate_limit=0)
    with SandboxServer(sandbox):
        yield sandbox


def test_every_served_operation_of_the_document_is_fuzzed() -> None:
    fuzzed = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert fuzzed == SERVED


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_the_sandbox_answers_as_the_document_says(case: Any, nomos_live: Sandbox) -> None:
    key = f"{case.operation.method.upper()} {case.operation.path}"
    if case.operation.path == "/oauth/token":
        import base64

        basic = base64.b64encode(b"fuzz-client:fuzz-secret").decode()
        headers = {"Authorization": f"Basic {basic}"}
    else:
        headers = {"Authorization": f"Bearer {nomos_live.issue_token()}"}
    excused = [check for check in CHECKS
               if (key, check.__name__) in KNOWN_DIFFERENCES
               or ("*", check.__name__) in KNOWN_DIFFERENCES]
    if case.headers:
        # The transport writes Content-Length; a generated one that lies about the body only
        # measures how long a server waits for bytes that never come.
        case.headers = {k: v for k, v in case.headers.items() if k.lower() != "content-length"}
    response = case.call(base_url=nomos_live.base_url, headers=headers, timeout=10)
    case.validate_response(response, checks=[c for c in CHECKS if c not in excused],
                           headers=headers)
