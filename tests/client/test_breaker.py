"""The outage breaker: after a few failures in a row, calls fail at once (no request reaches
Nomos) for a cool-down, then one probe decides. Judged by the requests the sandbox counted, the
answers, the log lines and the rows; the cool-down is made short instead of timing anything."""

from __future__ import annotations

import time
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from nomos_billing import breaker
from nomos_billing.client import get_client
from nomos_billing.exceptions import NomosUnavailable
from nomos_billing.models import WebhookEvent
from nomos_billing.sandbox import Fault, seed
from nomos_billing.testing import make_event, post_event

MAGIC = "POST /admin/magic_link"
TOKEN = "POST /oauth/token"
SUB_GET = "GET /subscriptions/{id}"


@pytest.fixture
def on(settings: Any, nomos: Any) -> Any:
    """The breaker on: 3 failures open it for a 30 s cool-down; no retries, so each failed
    call is one request."""
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "BREAKER_FAILURES": 3,
                              "BREAKER_COOLDOWN": 30, "MAX_RETRIES": 0}
    get_client().tokens.get()
    nomos.reset_counts()
    return settings


@pytest.fixture
def alice_client(linked_alice: Any) -> Client:
    client = Client()
    client.force_login(linked_alice)
    return client


def breaker_lines(caplog: Any) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "nomos_billing.breaker"]


def cool_down_passes(settings: Any) -> None:
    """Move the shared 'open until' into the past, as if the cool-down had elapsed."""
    from django.core.cache import caches

    key = breaker._key() + ":open"
    cache = caches["default"]
    cache.set(key, time.time() - 1, None)
    breaker.reset()


@pytest.mark.django_db
def test_clicks_during_an_outage_fail_at_once_after_the_threshold(on, nomos, alice_client,
                                                                  caplog):
    nomos.add_fault(MAGIC, Fault(status=500), times=None)

    statuses = [alice_client.get("/nomos/portal/").status_code for _ in range(10)]

    assert statuses == [503] * 10
    assert nomos.count(MAGIC) == 3  # the other 7 clicks never left the site
    assert len([m for m in breaker_lines(caplog) if "opened" in m]) == 1
    response = alice_client.get("/nomos/portal/")
    assert 1 <= int(response["Retry-After"]) <= 30


@pytest.mark.django_db
def test_another_worker_sees_the_open_breaker_through_the_cache(on, nomos):
    nomos.add_fault(MAGIC, Fault(status=502), times=None)
    for _ in range(3):
        with pytest.raises(NomosUnavailable):
            get_client().create_magic_link(seed.ALICE)
    breaker.reset()  # what another process knows: only the shared cache
    with pytest.raises(breaker.CircuitOpen):
        get_client().create_magic_link(seed.ALICE)
    assert nomos.count(MAGIC) == 3


@pytest.mark.django_db
def test_after_the_cool_down_one_probe_closes_it_for_everyone(on, nomos, alice_client,
                                                               caplog):
    nomos.add_fault(MAGIC, Fault(status=500), times=3)
    for _ in range(4):
        alice_client.get("/nomos/portal/")
    assert nomos.count(MAGIC) == 3
    cool_down_passes(on)

    statuses = [alice_client.get("/nomos/portal/").status_code for _ in range(3)]

    assert statuses == [302, 302, 302]
    assert nomos.count(MAGIC) == 6
    assert len([m for m in breaker_lines(caplog) if "closed" in m]) == 1
    assert not breaker.state().open


@pytest.mark.django_db
def test_a_failed_probe_opens_it_again_and_only_one_probe_goes_out(on, nomos):
    nomos.add_fault(MAGIC, Fault(status=503), times=None)
    for _ in range(3):
        with pytest.raises(NomosUnavailable):
            get_client().create_magic_link(seed.ALICE)
    cool_down_passes(on)
    for _ in range(5):
        with pytest.raises(NomosUnavailable):
            get_client().create_magic_link(seed.ALICE)
    assert nomos.count(MAGIC) == 4  # the threshold's 3, then exactly one probe
    state = breaker.state()
    assert state.open and state.retry_in > 20


@pytest.mark.django_db
def test_refusals_and_rate_limits_are_not_outages(on, nomos, alice_client):
    nomos.add_fault(MAGIC, Fault(status=404), times=5)
    nomos.add_fault(MAGIC, Fault(status=429, retry_after=60), times=5)
    for _ in range(10):
        alice_client.get("/nomos/portal/")
    assert nomos.count(MAGIC) == 10
    assert not breaker.state().open


# Twelve calls in a row: the breaker's count, not pacing.
@pytest.mark.sandbox_rate_limit(0)
@pytest.mark.django_db
def test_a_success_resets_the_count(on, nomos):
    for _ in range(4):
        nomos.add_fault(MAGIC, Fault(status=500), times=2)
        for _ in range(2):
            with pytest.raises(NomosUnavailable):
                get_client().create_magic_link(seed.ALICE)
        get_client().create_magic_link(seed.ALICE)
    assert nomos.count(MAGIC) == 12
    assert not breaker.state().open


@pytest.mark.django_db
def test_off_switch(on, nomos, alice_client, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "BREAKER_FAILURES": 0}
    nomos.add_fault(MAGIC, Fault(status=500), times=None)
    for _ in range(6):
        alice_client.get("/nomos/portal/")
    assert nomos.count(MAGIC) == 6
    assert not breaker.state().enabled


@pytest.mark.django_db
def test_webhook_during_an_open_breaker_answers_503_at_once_and_keeps_the_event(on, nomos,
                                                                              client):
    nomos.add_fault(SUB_GET, Fault(drop_connection=True), times=None)
    events = [make_event("subscription.updated", {"subscription": seed.ALICE_SUBSCRIPTION})
              for _ in range(6)]

    assert [post_event(client, e).status_code for e in events] == [503] * 6

    assert nomos.count(SUB_GET) == 3
    assert set(WebhookEvent.objects.values_list("status", flat=True)) == {"failed"}
    assert WebhookEvent.objects.filter(last_error__contains="breaker").count() == 3
    nomos.clear_faults()
    cool_down_passes(on)
    assert [post_event(client, e).status_code for e in events] == [200] * 6
    assert set(WebhookEvent.objects.values_list("status", flat=True)) == {"processed"}


@pytest.mark.django_db
def test_a_failed_token_fetch_counts(on, nomos):
    from django.core.cache import caches

    store = get_client().tokens
    nomos.add_fault(TOKEN, Fault(status=503), times=None)
    for _ in range(5):
        # No token anywhere, and the last failure's shared record has expired.
        caches["default"].delete_many([store.key, store.key + ":failed"])
        store._local = None
        with pytest.raises(NomosUnavailable):
            get_client().create_magic_link(seed.ALICE)
    assert nomos.count(TOKEN) == 3  # then the breaker was open
    assert nomos.count(MAGIC) == 0


@pytest.mark.django_db
def test_check_credentials_shows_the_breaker_state(on, nomos):
    out = StringIO()
    call_command("nomos_check_credentials", stdout=out)
    assert "Breaker:    closed" in out.getvalue()

    nomos.add_fault(MAGIC, Fault(status=500), times=None)
    for _ in range(3):
        with pytest.raises(NomosUnavailable):
            get_client().create_magic_link(seed.ALICE)
    out = StringIO()
    nomos.reset_counts()
    with pytest.raises(CommandError):  # the token fetch is refused by the open breaker
        call_command("nomos_check_credentials", stdout=out, stderr=StringIO())
    assert "Breaker:    OPEN after 3 failures" in out.getvalue()
    assert nomos.count(TOKEN) == 0  # refused here, not sent



@pytest.mark.django_db
@pytest.mark.parametrize("breaker_on", [True, False], ids=["shared", "breaker-off"])
def test_a_failed_token_fetch_is_shared_so_the_next_caller_fails_at_once(breaker_on, on,
                                                                         nomos, settings):
    from django.core.cache import caches

    if not breaker_on:
        settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "BREAKER_FAILURES": 0}
    caches["default"].clear()
    store = get_client().tokens
    store._local = None
    nomos.add_fault(TOKEN, Fault(status=503), times=1)
    with pytest.raises(NomosUnavailable):
        store.get()
    if breaker_on:
        # Another worker (no local copy) does not ask Nomos again while the failure is fresh.
        with pytest.raises(NomosUnavailable, match="moments ago"):
            store.get()
        assert nomos.count(TOKEN) == 1
        caches["default"].delete(store.key + ":failed")  # FAILED_FETCH_TTL has passed
    assert store.get().value
    assert nomos.count(TOKEN) == 2


def test_the_state_of_a_closed_and_of_a_switched_off_breaker(on, settings):
    from django.core.cache import caches

    assert breaker.state() == breaker.State(enabled=True, open=False, failures=0, retry_in=0.0)
    # A count the cache mangled is no count.
    caches["default"].set(breaker._key() + ":failures", "garbage", None)
    assert breaker.state() == breaker.State(enabled=True, open=False, failures=0, retry_in=0.0)
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "BREAKER_FAILURES": 0}
    assert breaker.state() == breaker.State(enabled=False, open=False, failures=0, retry_in=0.0)


@pytest.mark.django_db
def test_after_a_failed_probe_the_next_cool_down_probes_again(on, nomos):
    # The failed probe gives its lock back: the next cool-down's probe must not wait for the
    # lock's own expiry (the request timeouts), which may outlast a short cool-down.
    nomos.add_fault(MAGIC, Fault(status=503), times=None)
    for _ in range(3):
        with pytest.raises(NomosUnavailable):
            get_client().create_magic_link(seed.ALICE)
    cool_down_passes(on)
    with pytest.raises(NomosUnavailable):
        get_client().create_magic_link(seed.ALICE)  # the first probe, failed
    cool_down_passes(on)
    with pytest.raises(NomosUnavailable) as excinfo:
        get_client().create_magic_link(seed.ALICE)
    assert "another worker is probing" not in str(excinfo.value)
    assert nomos.count(MAGIC) == 5  # the threshold's 3, then one probe per cool-down


@pytest.mark.django_db
def test_a_process_looks_at_the_shared_state_once_per_refresh_while_nothing_fails(
        on, nomos, monkeypatch):
    # A click pays no cache read while the last look is fresh: another worker's opening is
    # seen at the next look, not at once. REFRESH made long so that no timing matters, but
    # shorter than the machine's uptime (time.monotonic()): a look's age must be measured.
    from django.core.cache import caches

    monkeypatch.setattr(breaker, "REFRESH", 60.0)
    get_client().create_magic_link(seed.ALICE)  # looks: closed
    caches["default"].set(breaker._key() + ":open", time.time() + 30, None)  # another worker
    get_client().create_magic_link(seed.ALICE)
    assert nomos.count(MAGIC) == 2
    breaker.reset()  # the next look
    with pytest.raises(breaker.CircuitOpen):
        get_client().create_magic_link(seed.ALICE)
    assert nomos.count(MAGIC) == 2


class NotedTTLs:
    """The shared cache as the breaker uses it, noting the lifetime each key is added with."""

    def __init__(self, cache: Any) -> None:
        self.cache, self.ttl = cache, {}

    def add(self, key: str, value: Any, timeout: Any = None) -> Any:
        self.ttl[key.rsplit(":", 1)[1]] = timeout
        return self.cache.add(key, value, timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cache, name)


@pytest.mark.parametrize(("cooldown", "window"), [(5, 60), (10, 60), (30, 180), (10.5, 63)])
def test_failures_count_as_in_a_row_for_six_cool_downs_and_at_least_a_minute(
        on, cooldown, window, monkeypatch):
    # How long the shared count of failures lives: a failure older than that starts afresh.
    on.NOMOS_BILLING = {**on.NOMOS_BILLING, "BREAKER_COOLDOWN": cooldown}
    noted = NotedTTLs(breaker._cache())
    monkeypatch.setattr(breaker, "_cache", lambda: noted)
    breaker.record_failure("HTTP 503")
    assert noted.ttl["failures"] == window
    assert breaker.state().failures == 1


@pytest.mark.django_db
def test_the_state_shown_is_read_now_not_this_process_last_look(on, nomos, monkeypatch):
    # nomos_check_credentials and the health page show what every worker sees, even while
    # this process still trusts its last look (REFRESH made long so that no timing matters).
    from django.core.cache import caches

    monkeypatch.setattr(breaker, "REFRESH", 60.0)
    get_client().create_magic_link(seed.ALICE)  # this process looks: closed
    caches["default"].set_many({breaker._key() + ":open": time.time() + 30,
                                breaker._key() + ":failures": 3}, None)  # another worker
    state = breaker.state()
    assert (state.open, state.failures) == (True, 3)
    assert 20 < state.retry_in <= 30


def test_an_open_breaker_whose_cool_down_is_over_shows_a_probe_due_now(on):
    from django.core.cache import caches

    from nomos_billing.management.commands.nomos_check_credentials import describe_breaker

    caches["default"].set(breaker._key() + ":open", time.time() - 5, None)
    state = breaker.state()
    assert state.open and state.word == "open"
    assert state.retry_in == 0.0
    assert describe_breaker() == "OPEN after 0 failures: the next call is the probe"


class ExpiresOnce(NotedTTLs):
    """The shared count expires once between the breaker's ``add`` and its ``incr``."""

    expired = False

    def incr(self, key: str, delta: int = 1) -> Any:
        if not self.expired:
            self.expired = True
            self.cache.delete(key)
        return self.cache.incr(key, delta)


def test_a_count_that_expires_between_add_and_incr_starts_afresh_at_one(on, monkeypatch):
    on.NOMOS_BILLING = {**on.NOMOS_BILLING, "BREAKER_FAILURES": 2}
    noted = ExpiresOnce(breaker._cache())
    monkeypatch.setattr(breaker, "_cache", lambda: noted)
    breaker.record_failure("HTTP 503")
    assert noted.expired
    assert noted.ttl["failures"] == 180  # six 30 s cool-downs, as for any count
    assert (breaker.state().open, breaker.state().failures) == (False, 1)
    breaker.record_failure("HTTP 503")
    assert (breaker.state().open, breaker.state().failures) == (True, 2)


def test_failures_recorded_on_a_thread_that_never_asked_count(on):
    # A thread of its own (a worker's pool) may report a failure without an allow() first.
    import threading

    errors: list[BaseException] = []

    def fail_three_times() -> None:
        try:
            for _ in range(3):
                breaker.record_failure("timed out")
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    thread = threading.Thread(target=fail_three_times)
    thread.start()
    thread.join()
    assert errors == []
    assert breaker.state().open


def test_the_opening_is_logged_once_with_the_count_the_last_failure_and_the_cool_down(
        on, caplog):
    for _ in range(4):
        breaker.record_failure("HTTP 503")
    assert breaker_lines(caplog) == [
        "Nomos outage breaker opened after 3 failures in a row (last: HTTP 503): calls fail at "
        "once for 30 s, then one probe decides"]


def test_a_failed_call_that_was_not_the_probe_does_not_extend_the_cool_down(on):
    # Calls sent before the breaker opened fail later; only the probe's failure starts a new
    # cool-down. Here the cool-down has 5 s left when they fail.
    import threading

    from django.core.cache import caches

    for _ in range(3):
        breaker.record_failure("HTTP 503")
    caches["default"].set(breaker._key() + ":open", time.time() + 5, None)
    breaker.record_failure("timed out")  # this thread's, after its own failures
    assert 0 < breaker.state().retry_in <= 5
    thread = threading.Thread(target=breaker.record_failure, args=("timed out",))
    thread.start()  # another thread's, which never asked allow()
    thread.join()
    assert 0 < breaker.state().retry_in <= 5


def test_a_probe_that_succeeds_after_another_worker_closed_the_breaker_frees_the_next_probe(
        on, monkeypatch):
    from django.core.cache import caches

    cache, key = caches["default"], breaker._key()
    monkeypatch.setattr(breaker, "REFRESH", 0.0)  # every look reads the shared state
    cache.set(key + ":open", time.time() - 1, None)  # the cool-down is over
    breaker.allow("a call")  # this call is the probe
    cache.delete_many([key + ":open", key + ":failures"])  # another worker's probe closed it
    breaker.record_success()
    # The breaker opens again and cools down: the next probe goes out, not refused.
    cache.set(key + ":open", time.time() - 1, None)
    breaker.allow("the next call")
