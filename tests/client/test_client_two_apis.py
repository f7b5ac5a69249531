"""Two Nomos APIs in one process (two live sandboxes, the same credentials, one cache): what is
kept per API stays with its API. A site that moves from a staging to a production API (or
runs a worker per tenant) must not send one API's token to the other, carry one API's outage
into the other, or let one API's refusal silence the other's report.

Each test goes A, then B, then A again: state leaking from A to B shows at B, state B
overwrote shows back at A. Also with the shared cache down (its stand-in keeps the same keys).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from nomos_billing.breaker import CircuitOpen
from nomos_billing.client import get_client
from nomos_billing.exceptions import NomosError, NomosUnavailable
from nomos_billing.sandbox import Fault, Sandbox, SandboxServer, seed
from tests.broken_cache import BrokenCache
from tests.conftest import CLIENT_ID, CLIENT_SECRET, _sandboxes

TOKEN = "POST /oauth/token"
CUSTOMER = "GET /customers/{id}"


@pytest.fixture
def two(settings: Any) -> Iterator[dict[str, Sandbox]]:
    a = Sandbox(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    b = Sandbox(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    _sandboxes.extend([a, b])  # their tokens must not reach a log either
    with SandboxServer(a, host="127.0.0.1", port=0), SandboxServer(b, host="127.0.0.1", port=0):
        assert a.base_url != b.base_url
        yield {"A": a, "B": b}


@pytest.fixture(params=["shared cache", "cache down"])
def cache(request: Any, settings: Any) -> str:
    if request.param == "cache down":
        BrokenCache.calls, BrokenCache.broken = 0, True
        settings.CACHES = {**settings.CACHES,
                           "broken": {"BACKEND": "tests.broken_cache.BrokenCache"}}
        settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TOKEN_CACHE": "broken"}
    return str(request.param)


def use(settings: Any, sandbox: Sandbox, **values: Any) -> None:
    """Point the site at ``sandbox`` (the client is rebuilt, as after a deploy)."""
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "API_BASE_URL": sandbox.base_url,
                              **values}


def ask(settings: Any, sandbox: Sandbox, **values: Any) -> Any:
    use(settings, sandbox, **values)
    return get_client().get_customer(seed.ALICE)


def test_each_api_gets_its_own_token(two, settings, cache):
    a, b = two["A"], two["B"]
    assert ask(settings, a)["id"] == seed.ALICE
    assert ask(settings, b)["id"] == seed.ALICE
    assert ask(settings, a)["id"] == seed.ALICE
    # One token per API, and A's was still there for the third call.
    assert (a.count(TOKEN), b.count(TOKEN)) == (1, 1)
    assert (a.count(CUSTOMER), b.count(CUSTOMER)) == (2, 1)
    # Neither API was ever shown the other's token (each would answer 401 and we refetch).
    assert not set(a.issued_tokens()) & set(b.issued_tokens())


def test_an_outage_of_one_api_opens_its_breaker_only(two, settings, cache):
    a, b = two["A"], two["B"]
    breaker = {"BREAKER_FAILURES": 2, "BREAKER_COOLDOWN": 60, "MAX_RETRIES": 0}
    a.add_fault(CUSTOMER, Fault(status=503), times=None)
    for _ in range(2):
        with pytest.raises(NomosUnavailable):
            ask(settings, a, **breaker)
    with pytest.raises(CircuitOpen):
        ask(settings, a, **breaker)
    assert a.count(CUSTOMER) == 2  # the third never reached A

    # B is up: its calls go through at once, and its successes do not close A's breaker.
    for _ in range(3):
        assert ask(settings, b, **breaker)["id"] == seed.ALICE
    assert b.count(CUSTOMER) == 3

    with pytest.raises(CircuitOpen):
        ask(settings, a, **breaker)
    assert a.count(CUSTOMER) == 2


def test_a_refusal_of_one_api_does_not_silence_the_others(two, settings, caplog):
    a, b = two["A"], two["B"]
    caplog.set_level(logging.ERROR, logger="nomos_billing")
    wrong = {"CLIENT_SECRET": "not-the-secret", "MAX_RETRIES": 0}
    for sandbox in (a, b, a, b):
        with pytest.raises(NomosError):
            ask(settings, sandbox, **wrong)
    reports = [r.getMessage() for r in caplog.records if "refused our credentials" in
               r.getMessage()]
    # Once per API and cool-down: A's report, B's report, and no repeats.
    assert len(reports) == 2
    assert a.base_url in reports[0] and b.base_url in reports[1]
