"""Each branch of ``TokenStore`` renewal, driven step by step.

Every worker is its own ``TokenStore`` (as every process has its own) over the one shared cache
of the run (local memory, or Redis when CACHE_URL is set). The moments that matter (another
worker renews between our read and our lock; a waiter already holds a valid token; the renewer
hangs or fails) are made to happen with events and a fake clock, never with sleeps: the fake
clock's ``sleep`` is where a waiting worker polls, so the test acts exactly while it waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.cache import caches

from nomos_billing import tokens
from nomos_billing.conf import nomos_settings
from nomos_billing.tokens import AccessToken, TokenStore

pytestmark = pytest.mark.django_db(databases=[])

_real_sleep = time.sleep


class FakeClock:
    """``time``/``monotonic``/``sleep`` for ``nomos_billing.tokens``.

    ``sleep`` moves the clock on (when ``ticking``) instead of waiting, then calls ``on_sleep``
    (the test's hook) and yields the CPU for a moment so that other threads run.
    """

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.ticking = True
        self.on_sleep: Callable[[], None] | None = None
        self.sleepers: set[int] = set()
        self.polls = 0
        self._lock = threading.Lock()

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleepers.add(threading.get_ident())
            if self.ticking:
                self.now += seconds
            self.polls += 1
            if self.now > 1_800_000_000.0 + 3600 or self.polls > 20_000:
                raise AssertionError("a waiter polls on and on: it would never give up")
        if self.on_sleep is not None:
            self.on_sleep()
        _real_sleep(0.001)


@pytest.fixture
def clock(monkeypatch) -> Iterator[FakeClock]:
    fake = FakeClock()
    monkeypatch.setattr(tokens, "time", fake)
    yield fake


class Nomos:
    """The token endpoint: counts fetches; a fetch may be held until the test lets it go."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.fetched: list[str] = []
        self.started = 0
        #: Set when a second fetch starts while one is held: single-flight is already lost,
        #: so the held one need not wait for the test any longer.
        self.release_on_second_fetch: threading.Event | None = None
        self._lock = threading.Lock()

    def fetcher(self, worker: str, *, hold: threading.Event | None = None,
                started: threading.Event | None = None, fail: bool = False,
                ) -> Callable[[], AccessToken]:
        def fetch() -> AccessToken:
            if started is not None:
                started.set()
            with self._lock:
                self.started += 1
                if self.started > 1 and self.release_on_second_fetch is not None:
                    self.release_on_second_fetch.set()
            if hold is not None:
                assert hold.wait(30), "the test never released the fetch"
            if fail:
                raise RuntimeError(f"token request of {worker} failed")
            with self._lock:
                self.fetched.append(worker)
                value = f"token-{worker}-{len(self.fetched)}"
            return AccessToken(value, self.clock.time() + 3600)

        return fetch


@pytest.fixture
def nomos(clock: FakeClock) -> Nomos:
    return Nomos(clock)


def shared_token() -> AccessToken | None:
    return AccessToken.from_cache_value(
        caches[nomos_settings.TOKEN_CACHE].get(nomos_settings.token_cache_key))


def put_shared(token: AccessToken) -> None:
    caches[nomos_settings.TOKEN_CACHE].set(nomos_settings.token_cache_key,
                                           token.as_cache_value(), 3600)


class _LockHook:
    """The shared cache, calling ``before`` once just before the renewal lock is tried."""

    def __init__(self, cache: Any, before: Callable[[], None]) -> None:
        self._cache, self._before = cache, before

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)

    def add(self, key: str, *args: Any, **kwargs: Any) -> Any:
        before, self._before = self._before, lambda: None
        before()
        return self._cache.add(key, *args, **kwargs)


class HookedStore(TokenStore):
    def __init__(self, fetch: Callable[[], AccessToken], before_lock: Callable[[], None]) -> None:
        super().__init__(fetch)
        self._before_lock = before_lock

    @property
    def cache(self) -> Any:
        hooked = self.__dict__.get("_hooked")
        if hooked is None:
            hooked = self.__dict__["_hooked"] = _LockHook(super().cache, self._before_lock)
        return hooked


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(target())
        except BaseException as exc:  # reported by the test
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# -- the renewer ------------------------------------------------------------------------------


def test_renewer_uses_the_token_another_worker_stored_before_it_took_the_lock(nomos, clock):
    """Worker a finds no token; before a takes the lock, worker b renews. a must take b's."""
    b = TokenStore(nomos.fetcher("b"))
    a = HookedStore(nomos.fetcher("a"), before_lock=b.get)

    token = a.get()

    assert nomos.fetched == ["b"]
    assert token.value == "token-b-1" == shared_token().value


def test_renewer_stores_its_token_for_every_worker(nomos, clock):
    a, b = TokenStore(nomos.fetcher("a")), TokenStore(nomos.fetcher("b"))
    assert a.get() == b.get() == shared_token()
    assert nomos.fetched == ["a"]


def test_a_token_past_its_margin_is_renewed_but_not_before(nomos, clock):
    put_shared(AccessToken("old", clock.time() + 301))
    store = TokenStore(nomos.fetcher("a"))
    assert store.get().value == "old"
    clock.now += 1  # 300 s left: inside the default 300 s margin
    assert TokenStore(nomos.fetcher("b")).get().value == "token-b-1"
    assert nomos.fetched == ["b"]


# -- waiters ----------------------------------------------------------------------------------


def test_a_waiter_keeps_its_still_valid_token_while_another_worker_renews(nomos, clock):
    # 100 s left: inside the refresh margin, so both workers want a new token.
    old = AccessToken("old", clock.time() + 100)
    put_shared(old)
    hold, started = threading.Event(), threading.Event()
    renewer, renewed = in_thread(TokenStore(nomos.fetcher("b", hold=hold, started=started)).get)
    assert started.wait(30)  # b holds the renewal lock and waits for Nomos

    clock.on_sleep = lambda: pytest.fail("the waiter waited although its token is still valid")
    token = TokenStore(nomos.fetcher("a")).get()

    assert token == old
    clock.on_sleep = None
    hold.set()
    renewer.join(30)
    assert [r.value for r in renewed] == ["token-b-1"]
    assert nomos.fetched == ["b"]
    assert shared_token().value == "token-b-1"


def test_a_waiter_without_a_token_takes_the_renewers_token(nomos, clock):
    clock.ticking = False
    hold, started = threading.Event(), threading.Event()
    renewer, renewed = in_thread(TokenStore(nomos.fetcher("b", hold=hold, started=started)).get)
    assert started.wait(30)
    clock.on_sleep = hold.set  # Nomos answers the renewer while the waiter polls

    token = TokenStore(nomos.fetcher("a")).get()

    renewer.join(30)
    assert token.value == "token-b-1" == renewed[0].value
    assert nomos.fetched == ["b"]


def test_many_workers_waiting_at_once_cause_one_token_request(nomos, clock):
    """Nomos answers the renewer only once every other worker is waiting for it."""
    workers = 20
    clock.ticking = False  # nobody's wait runs out: the test decides when Nomos answers
    hold = threading.Event()
    everyone_waits = threading.Event()

    def poll() -> None:
        if len(clock.sleepers) >= workers - 1:
            everyone_waits.set()
            hold.set()

    clock.on_sleep = poll
    nomos.release_on_second_fetch = hold
    start = threading.Barrier(workers)

    def worker(name: str) -> Callable[[], AccessToken]:
        store = TokenStore(nomos.fetcher(name, hold=hold))

        def run() -> AccessToken:
            start.wait(30)
            return store.get()

        return run

    runs = [in_thread(worker(f"w{n}")) for n in range(workers)]
    for thread, _ in runs:
        thread.join(60)

    results = [out[0] for _, out in runs]
    assert len(nomos.fetched) == 1
    assert everyone_waits.is_set()
    assert {r.value for r in results} == {f"token-{nomos.fetched[0]}-1"}


# -- a renewer that hangs or fails ------------------------------------------------------------


def test_a_stuck_renewer_holds_waiters_only_for_their_wait_limit(nomos, clock, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TIMEOUT": (1.0, 2.0)}  # wait 4 s
    hold, started = threading.Event(), threading.Event()
    renewer, _ = in_thread(TokenStore(nomos.fetcher("stuck", hold=hold, started=started)).get)
    assert started.wait(30)
    before = clock.monotonic()

    token = TokenStore(nomos.fetcher("a")).get()

    waited = clock.monotonic() - before
    assert token.value == "token-a-1"
    assert nomos.fetched == ["a"]
    assert 4 <= waited < 4 + 2 * tokens.POLL_INTERVAL  # the limit, then at once
    hold.set()
    renewer.join(30)


def test_when_the_renewal_fails_one_waiter_becomes_the_renewer(nomos, clock):
    clock.ticking = False
    hold, started = threading.Event(), threading.Event()
    failing, failed = in_thread(
        TokenStore(nomos.fetcher("b", hold=hold, started=started, fail=True)).get)
    assert started.wait(30)

    def fail_while_a_waits() -> None:
        hold.set()
        failing.join(30)  # b's fetch has failed and its lock is gone

    clock.on_sleep = fail_while_a_waits
    token = TokenStore(nomos.fetcher("a")).get()

    assert isinstance(failed[0], RuntimeError)
    assert token.value == "token-a-1" == shared_token().value
    assert nomos.fetched == ["a"]


def test_a_renewal_failing_after_the_wait_limit_is_not_waited_for_again(nomos, clock):
    hold, started = threading.Event(), threading.Event()
    failing, failed = in_thread(
        TokenStore(nomos.fetcher("b", hold=hold, started=started, fail=True)).get)
    assert started.wait(30)
    limit = TokenStore(nomos.fetcher("x"))._wait_seconds()

    def fail_at_the_limit() -> None:
        if clock.monotonic() >= clock_start + limit and not hold.is_set():
            hold.set()
            failing.join(30)

    clock_start = clock.monotonic()
    clock.on_sleep = fail_at_the_limit
    token = TokenStore(nomos.fetcher("a")).get()

    assert isinstance(failed[0], RuntimeError)
    assert token.value == "token-a-1"
    assert nomos.fetched == ["a"]
