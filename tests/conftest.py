"""Fixtures shared by the whole suite.

``sandbox`` is a live fake Nomos on a loopback port; ``nomos`` also points NOMOS_BILLING at it.
``alice``, ``bob`` and ``superuser`` are the site's users (a folder's conftest.py may give them
more, e.g. Alice's customer in tests/portal/); ``connect_receiver`` connects a signal receiver for
one test and disconnects it after.
``no_secrets_in_logs`` runs for every test: no log record may contain a client secret, a
webhook secret or an access token the sandbox issued.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from django.core.cache import caches
from django.dispatch import Signal

from nomos_billing import client as client_module
from nomos_billing import shared_cache, takeover
from nomos_billing.client import reset_client
from nomos_billing.models import NomosCustomer
from nomos_billing.sandbox import Sandbox, SandboxServer, seed
from nomos_billing.sandbox.hosts import resolve_localhost
from nomos_billing.sandbox.ratelimit import NOMOS_RATE_LIMIT

# Under CI=true, a PostgreSQL or Redis test that skips in the run that has them fails it.
from tests.ci_skips import pytest_runtest_makereport  # noqa: F401

# The webhook receiver fixture, shared by the sandbox, forwarding and envelope tests.
from tests.receivers import receiver  # noqa: F401

# The contract tests run whenever the provider's document is beside the checkout (../shared),
# in `make test` too, not only where .ci/run points NOMOS_OPENAPI_SPEC at it.
_SHARED_SPEC = (Path(__file__).resolve().parent.parent.parent / "shared" / "nomos"
                / "openapi-2026-05-27.curie.json")
if _SHARED_SPEC.is_file():
    os.environ.setdefault("NOMOS_OPENAPI_SPEC", str(_SHARED_SPEC))


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    import sys

    contract = sys.modules.get("tests.contract")
    tally = getattr(contract, "TALLY", None)
    if tally is not None and (tally.requests or tally.responses or tally.envelopes):
        terminalreporter.section("contract against the Nomos OpenAPI document")
        for line in tally.lines():
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """The SQLite test database file of this process, named when the session starts.

    tests/settings.py names it by the pid that imported the settings; mutmut imports them once
    and forks a pytest session per mutant, two at a time, which then shared one file (each
    session creating and deleting it under the other) and let a few killable mutants survive.
    """
    from django.db import connections

    test = connections["default"].settings_dict.get("TEST") or {}
    name = test.get("NAME") or ""
    prefix = os.path.join(os.path.dirname(name), "nomos_billing_tests_")
    if name.startswith(prefix):
        test["NAME"] = f"{prefix}{os.getpid()}.sqlite3"


@pytest.fixture(autouse=True, scope="session")
def _localhost_names_are_loopback() -> Iterator[None]:
    """The sandbox's portal and checkout hosts are ``*.localhost`` names, which browsers
    resolve to loopback and this machine's resolver does not: the suite's requests following
    its links (also to servers the tests start themselves) resolve them as a browser does."""
    with resolve_localhost():
        yield


def sandbox_rate_limit(request: pytest.FixtureRequest) -> int:
    """The rate limit a test's sandbox enforces: Nomos' 10/s, or its ``sandbox_rate_limit``.

    The suite's own client limiter is off (``API_RATE_LIMIT`` None in tests/settings.py), so that
    the tests of retries, faults and counts do not wait for turns. Most tests make a handful of
    calls; the few that make more than ten on purpose (a hundred calls over one connection,
    fifty threads at a token's expiry, a sync walk of single-item pages) test our efficiency,
    not our pacing, and say so with ``@pytest.mark.sandbox_rate_limit(0)``. Pacing is tested
    with both limits on (tests/client/test_api_rate.py, tests/sandbox/test_sandbox_rate_limit.py).
    """
    marker = request.node.get_closest_marker("sandbox_rate_limit")
    return int(marker.args[0]) if marker is not None else NOMOS_RATE_LIMIT


CLIENT_ID = "sandbox-client"
CLIENT_SECRET = "sandbox-secret"
WEBHOOK_SECRETS = ["whsec_test_new", "whsec_test_old"]

_sandboxes: list[Sandbox] = []


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """Nomos' documented rate limit (10 requests/s) unless the test is marked
    ``sandbox_rate_limit(N)``: a test's traffic stays within what Nomos allows, and one that
    goes over gets Nomos' 429, not a silent pass (``sandbox_rate_limit``)."""
    sb = Sandbox(client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                 rate_limit=sandbox_rate_limit(request))
    _sandboxes.append(sb)
    with SandboxServer(sb, host="127.0.0.1", port=0):
        yield sb


@pytest.fixture
def nomos(sandbox: Sandbox, settings) -> Iterator[Sandbox]:
    """A live sandbox with NOMOS_BILLING pointing at it."""
    settings.NOMOS_BILLING = {
        **settings.NOMOS_BILLING,
        "API_BASE_URL": sandbox.base_url,
    }
    yield sandbox


@pytest.fixture
def alice(django_user_model: Any) -> Any:
    """A user with the address of the sandbox's customer Alice (``cus_sandbox_alice``), not
    linked to it."""
    return django_user_model.objects.create_user("alice", "alice@example.com", "pw")


@pytest.fixture
def linked_alice(django_user_model: Any) -> Any:
    """Alice, linked to the sandbox's customer Alice: instead of ``alice``, not beside it."""
    user = django_user_model.objects.create_user("alice", "alice@example.com", "pw")
    NomosCustomer.objects.create(user=user, customer_id=seed.ALICE, email="alice@example.com")
    return user


@pytest.fixture
def bob(django_user_model: Any) -> Any:
    """A user without a customer."""
    return django_user_model.objects.create_user("bob", "bob@example.com", "pw")


@pytest.fixture
def superuser(django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw")


def _receiver(sender: Any, **kwargs: Any) -> None:
    """A signal receiver's signature, for the mocks ``connect_receiver`` makes."""


@pytest.fixture
def connect_receiver() -> Iterator[Callable[..., Any]]:
    """``connect_receiver(signal, handler=None, sender=None)`` connects ``handler`` for this test
    only: disconnected after it, pass or fail, so no receiver outlives its test or needs a
    ``dispatch_uid``. Held strongly, so a local function or a lambda stays connected. Without a
    handler, an autospec'd mock (a receiver's signature) is connected and returned, for the
    test to assert its calls, as anymail's webhook tests do."""
    connected: list[tuple[Signal, Callable[..., Any], Any]] = []

    def connect(signal: Signal, handler: Callable[..., Any] | None = None,
                sender: Any = None) -> Any:
        if handler is None:
            handler = mock.create_autospec(_receiver)
        signal.connect(handler, sender=sender, weak=False)
        connected.append((signal, handler, sender))
        return handler

    yield connect
    for signal, handler, sender in reversed(connected):
        signal.disconnect(handler, sender=sender)


@pytest.fixture
def retry_sleeps(monkeypatch) -> list[float]:
    """The client's retry waits (urllib3's backoff and Retry-After), recorded, not slept:
    tests check how long the client would wait without betting on the machine's clock."""
    slept: list[float] = []
    monkeypatch.setattr("urllib3.util.retry.time",
                        SimpleNamespace(time=time.time, sleep=slept.append))
    return slept


@pytest.fixture(autouse=True)
def _fresh_client_and_cache() -> Iterator[None]:
    reset_client()
    # The process remembers per base URL that a token endpoint wants JSON; a later test's
    # sandbox may get the same loopback port, and must start from the form as a new API does.
    client_module._TOKEN_AS_JSON.clear()
    shared_cache.reset()
    takeover.reset()
    for alias in ("default",):
        caches[alias].clear()
    yield
    reset_client()


@pytest.fixture
def no_takeover_look(monkeypatch) -> None:
    """No look for stuck events after this test's requests (``takeover.after_request``): for
    tests that count a page's own queries, or keep stuck events on purpose. The look costs one
    query per process every quarter CLAIM_TIMEOUT, after the response."""
    monkeypatch.setattr("nomos_billing.takeover._next_look", float("inf"))


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + repr(record.exc_info[1]) + " " + str(record.exc_info[1])
        self.lines.append(text)


@pytest.fixture(autouse=True)
def no_secrets_in_logs() -> Iterator[_Capture]:
    handler = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    _sandboxes.clear()
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    secrets = {CLIENT_SECRET, *WEBHOOK_SECRETS}
    for sb in _sandboxes:
        secrets.update(sb.issued_tokens())
    leaked = [line for line in handler.lines for s in secrets if s and s in line]
    assert not leaked, f"secret or token in a log record: {leaked[:3]}"
