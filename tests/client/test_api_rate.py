"""The site's share of Nomos' rate limit (``api_rate``): whatever runs at once, at most the
limit reaches Nomos, clicks go first, a click waits no longer than its budget, and a cache
outage leaves each process its own share."""

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connections
from django.test import Client

from nomos_billing import api_rate, processing
from nomos_billing.client import get_client
from nomos_billing.models import NomosCustomer, WebhookEvent
from nomos_billing.sandbox import Sandbox, seed
from nomos_billing.sandbox.app import SandboxApp
from nomos_billing.sandbox.http import Response
from nomos_billing.shared_cache import SharedCache
from nomos_billing.testing import make_event
from tests.broken_cache import BrokenCache

PORTAL = "/nomos/portal/"
RATE = 10


def handle_without_rate_headers(app: SandboxApp, environ: dict[str, Any]) -> Response:
    """The sandbox's app with the ``ratelimit-*`` and ``retry-after`` headers taken off its
    answers: Nomos as its OpenAPI document declares it (no response headers), still limited."""
    response = SANDBOX_HANDLE(app, environ)
    response.headers = [(k, v) for k, v in response.headers if k.lower() not in RATE_HEADERS]
    return response


SANDBOX_HANDLE = SandboxApp.handle


RATE_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "retry-after")


@pytest.fixture
def limited(settings: Any, nomos: Sandbox) -> Iterator[None]:
    """Our limiter and the sandbox's, both at Nomos' documented rate."""
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "API_RATE_LIMIT": RATE,
                              "RATE_LIMITS": {"portal": None}, "CLICK_BUDGET": 5}
    nomos.rate_limiter.set_limit(RATE)
    api_rate.reset()
    yield
    api_rate.reset()


def without_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    # The running server built its app already; its class is where every answer passes.
    monkeypatch.setattr(SandboxApp, "handle", handle_without_rate_headers)


def over_the_limit(nomos: Sandbox) -> list[dict[str, Any]]:
    """The sandbox's 429 answers, those of its limit and any other."""
    return [e for e in nomos.request_log if e["status"] == 429]


# -- everything at once ---------------------------------------------------------------------------


#: The backlog: events for this many subscriptions (a fetch each, however many wait for it).
BACKLOG_SUBSCRIPTIONS = 40
BACKLOG_EVENTS = 200


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("headers", [True, False], ids=["with ratelimit headers", "without"])
def test_clicks_while_a_sync_and_a_backlog_run_stay_under_the_limit_and_never_see_a_429(
    limited: None, nomos: Sandbox, django_user_model: Any, headers: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The acceptance test of Nomos' budget: twenty people click the portal button while a
    full sync and a backlog of webhooks run, against the sandbox at Nomos' 10/s. The sandbox's
    own record is the judge: no second holds more than the limit (it counts a sliding second,
    so no tolerance is owed to a token bucket's burst), nothing is answered 429, no click fails.
    """
    if not headers:
        without_headers(monkeypatch)
    alice = django_user_model.objects.create_user("alice", "alice@example.com", "pw")
    NomosCustomer.objects.create(user=alice, customer_id=seed.ALICE, email="alice@example.com")
    backlog_subscriptions = [nomos.add_subscription(seed.ACME, status="active")["id"]
                             for _ in range(BACKLOG_SUBSCRIPTIONS)]
    for n in range(BACKLOG_EVENTS):
        event = make_event("subscription.activated",
                           {"subscription": backlog_subscriptions[n % BACKLOG_SUBSCRIPTIONS]})
        WebhookEvent.objects.create(event_id=event["id"], topic=event["topic"], payload=event)
    get_client().tokens.get()  # the token, once, before the clock starts
    stop = threading.Event()
    clicks: list[int] = []
    syncs: list[int] = []
    errors: list[BaseException] = []

    def clicker() -> None:
        client = Client()
        client.force_login(alice)
        # Twenty people clicking about once in four seconds each, at random moments.
        time.sleep(random.uniform(0, 4))
        clicks.append(client.get(PORTAL).status_code)

    def sync() -> None:
        while not stop.is_set():
            call_command("nomos_sync", page_size=5, stdout=io.StringIO())
            syncs.append(1)

    def backlog() -> None:
        for event in WebhookEvent.objects.filter(status="received").order_by("pk"):
            if stop.is_set():
                return
            processing.process_event(event)

    def run(target: Any) -> None:
        try:
            target()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    background = [threading.Thread(target=run, args=(f,)) for f in (sync, backlog)]
    clickers = [threading.Thread(target=run, args=(clicker,)) for _ in range(20)]
    for t in background + clickers:
        t.start()
    for t in clickers:
        t.join(30)
    stop.set()
    for t in background:
        t.join(30)

    assert errors == []
    assert sorted(clicks) == [302] * 20  # not one 503, from a 429 or from waiting
    assert nomos.count("POST /admin/magic_link") == 20
    # Nomos' own count (the sandbox's): nothing over the limit in any second, so no 429.
    assert nomos.rate_limiter.refused == 0
    assert over_the_limit(nomos) == []
    assert nomos.rate_limiter.busiest() <= RATE
    # ... and the seconds were full: the work used the budget, not merely stayed far from it.
    assert nomos.rate_limiter.busiest() >= RATE // 2
    # The sync and the backlog went on, within what the clicks left them.
    assert syncs and nomos.count("GET /subscriptions") >= 2
    processed = WebhookEvent.objects.filter(status="processed").count()
    assert processed >= 5
    assert nomos.count("GET /subscriptions/{id}") >= 2


# -- the time budget ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_click_that_cannot_get_a_turn_in_time_gets_the_503_page_at_once(
    limited: None, nomos: Sandbox, settings: Any, client: Client, django_user_model: Any
) -> None:
    alice = django_user_model.objects.create_user("alice", "alice@example.com", "pw")
    NomosCustomer.objects.create(user=alice, customer_id=seed.ALICE, email="alice@example.com")
    client.force_login(alice)
    get_client().tokens.get()
    # Nomos said "wait 30 s" (a 429 elsewhere in the site): longer than a click's budget.
    api_rate.observe(429, {"Retry-After": "30"})

    started = time.monotonic()
    response = client.get(PORTAL)

    assert response.status_code == 503
    assert response["Retry-After"] == "30"  # when Nomos said the next turn comes
    assert [t.name for t in response.templates][0] == "nomos_billing/unavailable.html"
    assert time.monotonic() - started < 1.0  # no wait that could not end in time
    assert nomos.count("POST /admin/magic_link") == 0


@pytest.mark.django_db
def test_a_click_waits_for_a_turn_inside_its_budget(
    limited: None, nomos: Sandbox, client: Client, django_user_model: Any
) -> None:
    alice = django_user_model.objects.create_user("alice", "alice@example.com", "pw")
    NomosCustomer.objects.create(user=alice, customer_id=seed.ALICE, email="alice@example.com")
    client.force_login(alice)
    get_client().tokens.get()
    api_rate.observe(200, {"ratelimit-remaining": "0", "ratelimit-reset": "1"})

    started = time.monotonic()
    response = client.get(PORTAL)

    assert response.status_code == 302
    assert 0.5 < time.monotonic() - started < 3.0
    assert nomos.count("POST /admin/magic_link") == 1


# -- priorities and Nomos' headers, counted at a fixed moment -----------------------------------


@pytest.fixture
def rate(limited: None) -> api_rate.SiteRate:
    return api_rate.site_rate()


def turns(rate: api_rate.SiteRate, kind: Any, now: float, tries: int = 20) -> int:
    return sum(rate.try_acquire(kind, now) == 0 for _ in range(tries))


@pytest.mark.parametrize(("order", "expected"), [
    (("background", "webhook", "click"), [5, 3, 2]),
    (("webhook", "background", "click"), [8, 0, 2]),
    (("click", "webhook", "background"), [10, 0, 0]),
])
def test_each_kind_of_work_fills_the_window_up_to_its_share(rate, order, expected) -> None:
    now = 1_000_000.05
    assert [turns(rate, kind, now) for kind in order] == expected


def clicked(rate: api_rate.SiteRate, moments: list[float]) -> None:
    for moment in moments:
        assert rate.try_acquire("click", moment) == 0


@pytest.mark.parametrize(("per_second", "room"), [(0, 0), (0.1, 2), (0.5, 4), (1, 5), (2, 8)])
def test_the_room_kept_for_clicks_follows_how_often_they_came(per_second, room) -> None:
    # Poisson: with 1.2 clicks a window on average, 5 or more come together less than 1 % of
    # the time, so 5 turns are kept.
    assert api_rate.click_room(per_second) == room


def test_after_a_click_a_second_a_backlog_leaves_room_for_five_clicks(rate) -> None:
    now = 1_000_000.05
    # Ten clicks in the last ten seconds, none in the current window.
    clicked(rate, [now - 9.9 + i * 0.9 for i in range(10)])
    assert turns(rate, "webhook", now) == 5
    assert turns(rate, "background", now) == 0
    assert turns(rate, "click", now) == 5  # the window holds the limit, no more
    # The same backlog with no click in ten seconds takes its whole share.
    later = now + 20
    assert turns(rate, "webhook", later) == 8


def test_clicks_in_the_window_do_not_take_the_turns_left_to_a_backlog(rate) -> None:
    now = 1_000_000.05
    # Ten clicks in ten seconds again, three of them in the current window: they use three
    # of the five turns kept for clicks, not the five left to the backlog.
    clicked(rate, [now - 9.9 + i * 1.2 for i in range(7)])
    clicked(rate, [now - 0.5, now - 0.4, now - 0.3])
    assert turns(rate, "webhook", now) == 5
    assert turns(rate, "click", now) == 2


def test_busy_clicks_never_starve_a_backlog(rate) -> None:
    now = 1_000_000.05
    clicked(rate, [now - 9.95 + i * 0.45 for i in range(20)])  # 2 a second
    assert turns(rate, "webhook", now) == 2
    assert api_rate.sustained_rate_beside_clicks("webhook", 2, 10) == pytest.approx(2 / 1.2)
    assert api_rate.sustained_rate_beside_clicks("webhook", 0, 10) == pytest.approx(8 / 1.2)
    assert api_rate.sustained_rate_beside_clicks("webhook", 1, 10) == pytest.approx(5 / 1.2)


def test_slot_counts_are_read_as_each_cache_returns_them() -> None:
    # Redis and local memory give ints back, pymemcache the bytes of an incremented counter.
    click = api_rate.CLICK_WEIGHT
    assert api_rate._turns(2 * click + 3, b"%d" % (click + 1), "4", None, b"junk") == (11, 3)


def test_a_click_outweighs_the_most_other_turns_a_slot_can_hold(settings, rate) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "API_RATE_LIMIT": 100_000}
    now = 1_000_000.05
    assert turns(rate, "webhook", now, tries=2_000) == 2_000
    assert turns(rate, "click", now, tries=3) == 3
    assert api_rate._turns(rate.cache.get(rate._slot_key(int(now / api_rate.SLOT)))) == (
        2_003, 3)


def test_the_window_moves_on_after_one_second_and_a_margin(rate) -> None:
    now = 1_000_000.05
    assert turns(rate, "click", now) == RATE
    assert rate.try_acquire("click", now + 1.1) > 0  # still inside the window
    assert turns(rate, "click", now + 1.2) == RATE


def test_a_lower_ratelimit_limit_from_nomos_is_followed(rate) -> None:
    rate.observe(200, {"ratelimit-limit": "4", "ratelimit-remaining": "4", "ratelimit-reset": "1"})
    assert turns(rate, "click", 1_000_000.05) == 4


def test_remaining_that_only_clicks_may_use_pauses_the_rest_until_reset(rate) -> None:
    rate.observe(200, {"ratelimit-limit": "10", "ratelimit-remaining": "2",
                       "ratelimit-reset": "3"})
    now = time.time()
    assert turns(rate, "click", now) == RATE
    assert 2.0 < rate.try_acquire("webhook", now) <= 3.0
    assert 2.0 < rate.try_acquire("background", now) <= 3.0


def test_a_429_pauses_every_kind_for_its_retry_after(rate) -> None:
    rate.observe(429, {"Retry-After": "7"})
    now = time.time()
    assert all(6.0 < rate.try_acquire(kind, now) <= 7.0 for kind in api_rate.SHARES)


def test_headers_that_are_not_numbers_are_ignored(rate) -> None:
    rate.observe(200, {"ratelimit-limit": "lots", "ratelimit-remaining": "-1",
                       "ratelimit-reset": "soon"})
    assert turns(rate, "click", 1_000_000.05) == RATE


def test_switched_off_it_counts_nothing(settings, rate) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "API_RATE_LIMIT": None}
    assert turns(rate, "background", 1_000_000.05, tries=50) == 50


# -- the cache fails ----------------------------------------------------------------------------


@pytest.fixture
def flaky(settings: Any, limited: None) -> Iterator[type[BrokenCache]]:
    BrokenCache.calls, BrokenCache.broken = 0, False
    settings.CACHES = {**settings.CACHES, "flaky": {"BACKEND": "tests.broken_cache.BrokenCache"}}
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TOKEN_CACHE": "flaky"}
    yield BrokenCache
    BrokenCache.broken = True


def process(name: str) -> api_rate.SiteRate:
    """One worker process's counters: the shared cache, and a stand-in of its own."""
    cache = SharedCache("flaky", stand_in=f"test-{name}")
    cache.local.clear()
    return api_rate.SiteRate(cache, "test")


def test_with_the_cache_down_each_process_keeps_its_own_share(flaky) -> None:
    first, second = process("first"), process("second")
    now = 1_000_000.05
    # While the cache answers, the two processes share one window (and count each other).
    admitted = sum(p.try_acquire("webhook", now) == 0 for _ in range(10) for p in (first, second))
    assert admitted == 8

    flaky.broken = True
    later = now + 5
    # Down: each counts alone, and keeps to half of what both may use (8 for webhooks).
    assert (turns(first, "webhook", later), turns(second, "webhook", later)) == (4, 4)
    assert (turns(first, "click", later + 5), turns(second, "click", later + 5)) == (5, 5)
    assert flaky.calls >= 1


def test_with_the_cache_down_calls_to_nomos_go_on(flaky, nomos) -> None:
    flaky.broken = True
    client = get_client()
    for _ in range(3):
        assert client.get_subscription(seed.ALICE_SUBSCRIPTION)["id"] == seed.ALICE_SUBSCRIPTION


# -- what the client tells the limiter ----------------------------------------------------------


@pytest.mark.django_db
def test_the_retry_after_a_429_waits_for_the_pause_it_set(
    limited: None, nomos: Sandbox, retry_sleeps: list[float]
) -> None:
    from nomos_billing.sandbox import Fault

    get_client().tokens.get()
    nomos.add_fault("GET /subscriptions/{id}", Fault(status=429, retry_after=2))
    started = time.monotonic()
    assert get_client().get_subscription(seed.ALICE_SUBSCRIPTION)["id"] == seed.ALICE_SUBSCRIPTION
    assert retry_sleeps == [2]  # backed off as before (recorded here, not slept)
    # ... and the retry took its turn after the pause the 429 set for every process.
    assert time.monotonic() - started >= 1.5
    assert nomos.count("GET /subscriptions/{id}") == 2


@pytest.mark.django_db
def test_a_429_given_up_on_pauses_the_clicks_that_follow(
    limited: None, nomos: Sandbox, client: Client, django_user_model: Any
) -> None:
    from nomos_billing.sandbox import Fault

    alice = django_user_model.objects.create_user("alice", "alice@example.com", "pw")
    NomosCustomer.objects.create(user=alice, customer_id=seed.ALICE, email="alice@example.com")
    client.force_login(alice)
    nomos.add_fault("GET /subscriptions/{id}", Fault(status=429, retry_after=60))
    with pytest.raises(api_rate.budget.NomosUnavailable):
        get_client().get_subscription(seed.ALICE_SUBSCRIPTION)

    response = client.get(PORTAL)

    assert response.status_code == 503
    assert nomos.count("POST /admin/magic_link") == 0


# -- against the sandbox's own limit ------------------------------------------------------------


@pytest.mark.django_db
def test_without_our_limiter_a_real_429_backs_off_for_its_retry_after_and_the_retry_gets_in(
    settings: Any, nomos: Sandbox
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "API_RATE_LIMIT": None}
    nomos.rate_limiter.set_limit(2)
    client = get_client()
    # The token and one read fill the sandbox's second; the next read is refused.
    assert client.get_subscription(seed.ALICE_SUBSCRIPTION)["id"] == seed.ALICE_SUBSCRIPTION
    assert client.get_subscription(seed.ALICE_SUBSCRIPTION)["id"] == seed.ALICE_SUBSCRIPTION

    arrivals = list(nomos.rate_limiter.arrivals)
    statuses = [e["status"] for e in nomos.request_log]
    if arrivals[2] - arrivals[0] >= 1.0:
        pytest.skip("the machine took more than a second for three requests")
    assert statuses == [200, 200, 429, 200]
    assert nomos.rate_limiter.refused == 1
    retry_after = int(nomos.request_log[2]["response_headers"]["retry-after"])
    assert retry_after == 1
    # The retry waited what the 429 said (the sandbox's clock), so it was admitted.
    assert arrivals[3] - arrivals[2] >= retry_after - 0.05


@pytest.mark.django_db
def test_our_limiter_follows_a_lower_limit_the_sandbox_announces(
    limited: None, nomos: Sandbox
) -> None:
    nomos.rate_limiter.set_limit(3)  # lower than API_RATE_LIMIT: only the headers say so
    client = get_client()
    for _ in range(6):
        assert client.get_subscription(seed.ALICE_SUBSCRIPTION)["id"] == seed.ALICE_SUBSCRIPTION

    assert nomos.count("GET /subscriptions/{id}") == 6
    assert nomos.rate_limiter.refused == 0
    assert over_the_limit(nomos) == []
    assert nomos.rate_limiter.busiest() <= 3


@pytest.mark.django_db
def test_our_limiter_alone_keeps_under_a_sandbox_that_sends_no_headers(
    limited: None, nomos: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_headers(monkeypatch)
    client = get_client()
    for _ in range(25):
        assert client.get_subscription(seed.ALICE_SUBSCRIPTION)["id"] == seed.ALICE_SUBSCRIPTION

    assert nomos.rate_limiter.refused == 0
    assert nomos.rate_limiter.busiest() <= RATE
    # Not by being slow: it used what the limit allowed (webhook work: 8 a window).
    assert nomos.rate_limiter.busiest() >= RATE // 2
