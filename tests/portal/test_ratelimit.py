"""Per-user limits (``ratelimit.py``) through the views against a live sandbox: one account
clicking in a loop reaches Nomos at most the configured number of times and gets 429 with
Retry-After for the rest; another account is unaffected. On SQLite + local memory and, with
CACHE_URL set, on Redis (the counters then live in the suite's Redis database). Plus the
counter's arithmetic, and a cache that is down (counting moves into the process, no 500)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from nomos_billing import ratelimit
from nomos_billing.conf import DEFAULTS, nomos_settings
from nomos_billing.models import NomosCustomer, NomosLead
from nomos_billing.sandbox import seed
from tests.ports import free_port

pytestmark = pytest.mark.django_db

PORTAL = "/nomos/portal/"
PORTAL_LINK = "/nomos/portal/link/"
START = "/nomos/portal/start/"
MAGIC = "POST /admin/magic_link"
LEAD_POST = "POST /leads"
LEAD_GET = "GET /leads/{id}"
CSRF = "A" * 32
PLAN = "pln_sandbox_home"
#: The start of a window for every window length used here (a multiple of 3600).
T0 = 1_800_000_000.0 - 1_800_000_000.0 % 3600


class Clock:
    def __init__(self) -> None:
        self.now = T0 + 1

    def time(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The limiter's clock, frozen inside one window unless a test moves it: a loop's count
    cannot depend on the machine crossing a window's end."""
    clock = Clock()
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=clock.time))
    ratelimit.reset()
    yield clock
    ratelimit.reset()


def limits(settings: Any, **scopes: Any) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "RATE_LIMITS": scopes}


@pytest.fixture
def acme(django_user_model: Any) -> Any:
    user = django_user_model.objects.create_user("acme", "acme@example.com", "pw")
    NomosCustomer.objects.create(user=user, customer_id=seed.ACME, email="acme@example.com")
    return user


def logged_in(user: Any, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    client.cookies["csrftoken"] = CSRF
    return client


def assert_429(response: Any, *, json_body: bool = False) -> int:
    assert response.status_code == 429, response.content[:300]
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= 3600
    assert "no-store" in response["Cache-Control"]
    if json_body:
        assert response.json()["code"] == "rate_limited"
    return retry_after


# -- the acceptance loops --------------------------------------------------------------------


# The per-user click limit, with Nomos' own limit out of the way.
@pytest.mark.sandbox_rate_limit(0)
def test_200_clicks_reach_nomos_at_most_the_limit_and_another_user_still_gets_through(
    nomos: Any, alice: Any, acme: Any, settings: Any
) -> None:
    limits(settings, portal=(10, 60))
    client, other = logged_in(alice), logged_in(acme)
    statuses, others = [], []
    for i in range(200):
        statuses.append(client.get(PORTAL))
        if i % 50 == 25:
            others.append(other.get(PORTAL).status_code)
    assert [r.status_code for r in statuses[:10]] == [302] * 10
    assert all(assert_429(r) for r in statuses[10:])
    assert others == [302] * 4
    assert nomos.count(MAGIC) == 10 + 4  # alice's ten, acme's four: nothing for the 190


def test_portal_link_json_is_limited_with_the_clicks(
    nomos: Any, alice: Any, acme: Any, settings: Any
) -> None:
    limits(settings, portal=(7, 60))
    client = logged_in(alice, csrf=True)
    headers = {"HTTP_X_CSRFTOKEN": CSRF}
    # The button and the JSON endpoint share one allowance: both mint links.
    assert client.get(PORTAL).status_code == 302
    answers = [client.post(PORTAL_LINK, **headers) for _ in range(200)]
    assert [r.status_code for r in answers[:6]] == [200] * 6
    retry = {assert_429(r, json_body=True) for r in answers[6:]}
    # 1 s into a full window: 59 s to its end, then 60 * (1 - 6/7) s for its weight to fall.
    assert retry == {68}
    assert answers[-1].json()["error"]
    second = logged_in(acme, csrf=True).post(PORTAL_LINK, **headers)
    assert second.status_code == 200 and "url" in second.json()
    assert nomos.count(MAGIC) == 7 + 1


def test_sign_up_form_creates_at_most_the_limit_of_leads(
    nomos: Any, django_user_model: Any, settings: Any
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "PLAN_ID": PLAN,
                              "RATE_LIMITS": {"signup": (5, 600)}}
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "pw")
    dora = django_user_model.objects.create_user("dora", "dora@example.com", "pw")
    client = logged_in(bob)
    form = {"zip_code": "10115", "estimated_usage": "2500"}
    answers = [client.post(START, form) for _ in range(200)]
    assert [r.status_code for r in answers[:5]] == [303] * 5
    assert all(assert_429(r) for r in answers[5:])
    # The form itself stays available: only sending it counts.
    assert client.get(START).status_code == 200
    assert logged_in(dora).post(START, form).status_code == 303
    assert nomos.count(LEAD_POST) == 5 + 1
    assert NomosLead.objects.filter(user=bob).count() == 5


# The per-user lookup limit, with Nomos' own limit out of the way.
@pytest.mark.sandbox_rate_limit(0)
def test_recent_checkout_lookups_are_limited_per_user(
    nomos: Any, django_user_model: Any, settings: Any
) -> None:
    limits(settings, portal=(1000, 60), recent_checkout=(4, 300))
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "pw")
    for _ in range(3):  # three sign-ups that have not converted: up to 3 lookups per click
        lead = nomos.create_lead({"plan": PLAN, "address": {"zip": "10115"},
                                  "meter": {"estimated_usage": 2500}}, nomos.base_url)
        NomosLead.objects.create(lead_id=lead["id"], user=bob, plan=PLAN)
    client = logged_in(bob)
    answers = [client.get(PORTAL) for _ in range(200)]
    assert [r.status_code for r in answers[:4]] == [200] * 4  # not linked yet: the page
    assert all(assert_429(r) for r in answers[4:])
    assert nomos.count(LEAD_GET) == 4 * 3


def test_a_user_without_recent_leads_is_not_counted_for_lookups(
    nomos: Any, django_user_model: Any, settings: Any
) -> None:
    limits(settings, portal=(1000, 60), recent_checkout=(1, 300))
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "pw")
    old = NomosLead.objects.create(lead_id="lead_old", user=bob, plan=PLAN)
    two_days_ago = timezone.now() - timezone.timedelta(days=2)
    NomosLead.objects.filter(pk=old.pk).update(created_at=two_days_ago)
    client = logged_in(bob)
    assert [client.get(PORTAL).status_code for _ in range(5)] == [200] * 5
    assert nomos.calls == {}


# -- the 429 page --------------------------------------------------------------------------


def test_429_page_in_english_and_german_with_the_wait(
    nomos: Any, alice: Any, settings: Any
) -> None:
    limits(settings, portal=(1, 60))
    client = logged_in(alice)
    assert client.get(PORTAL).status_code == 302
    english = client.get(PORTAL)
    assert_429(english)
    assert english["Retry-After"] == "119"  # one per sliding 60 s: 1 s in, the next in 119
    text = english.content.decode()
    assert "Too many requests" in text and "Please try again in 2 minutes." in text
    german = client.get(PORTAL, HTTP_ACCEPT_LANGUAGE="de")
    assert_429(german)
    text = german.content.decode()
    assert "Zu viele Anfragen" in text and "Bitte versuchen Sie es in 2 Minuten erneut." in text
    assert nomos.count(MAGIC) == 1


def test_429_page_counts_seconds_when_the_wait_is_short(
    nomos: Any, alice: Any, settings: Any, clock: Clock
) -> None:
    limits(settings, portal=(3, 60))
    client = logged_in(alice)
    assert [client.get(PORTAL).status_code for _ in range(3)] == [302] * 3
    clock.now += 90  # 31 s into the next window: 3 * 29/60 = 1.45 of 3 still used
    assert [client.get(PORTAL).status_code for _ in range(2)] == [302, 429]
    # 1.45 + 1 fits, 1.45 + 2 does not until the share is 1: 60 * (1 - 1/3) = 40 s in.
    late = client.get(PORTAL)
    assert late["Retry-After"] == "9"
    assert "Please try again in 9 seconds." in late.content.decode()


def test_429_page_rounds_a_wait_of_minutes_up(
    nomos: Any, alice: Any, settings: Any, clock: Clock
) -> None:
    # A minute and a second is "2 minutes": a user who comes back after "1 minute" is refused.
    limits(settings, portal=(1, 60))
    clock.now = T0 + 59
    client = logged_in(alice)
    assert client.get(PORTAL).status_code == 302
    response = client.get(PORTAL)
    assert_429(response)
    assert response["Retry-After"] == "61"
    assert "Please try again in 2 minutes." in response.content.decode()


def test_a_site_can_override_the_429_page(
    nomos: Any, alice: Any, settings: Any, tmp_path: Any
) -> None:
    (tmp_path / "nomos_billing").mkdir()
    (tmp_path / "nomos_billing" / "rate_limited.html").write_text("slow down {{ retry_after }}")
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [str(tmp_path)]}]
    limits(settings, portal=(1, 60))
    client = logged_in(alice)
    client.get(PORTAL)
    response = client.get(PORTAL)
    assert (response.status_code, response.content) == (429, b"slow down 119")


# Thirty clicks at once: an unlimited scope, with Nomos' own limit out of the way.
@pytest.mark.sandbox_rate_limit(0)
def test_a_scope_set_to_none_is_not_limited(nomos: Any, alice: Any, settings: Any) -> None:
    limits(settings, portal=None)
    client = logged_in(alice)
    assert {client.get(PORTAL).status_code for _ in range(30)} == {302}
    assert nomos.count(MAGIC) == 30


def test_time_frees_the_allowance_again(
    nomos: Any, alice: Any, settings: Any, clock: Clock
) -> None:
    limits(settings, portal=(2, 60))
    client = logged_in(alice)
    assert [client.get(PORTAL).status_code for _ in range(3)] == [302, 302, 429]
    wait = int(client.get(PORTAL)["Retry-After"])
    clock.now += wait - 1
    assert client.get(PORTAL).status_code == 429
    clock.now += 1
    assert client.get(PORTAL).status_code == 302


# -- a cache that fails --------------------------------------------------------------------


@pytest.fixture
def dead_cache(settings: Any) -> str:
    """RATE_LIMIT_CACHE on a Redis port nobody listens on."""
    pytest.importorskip("redis")
    settings.CACHES = {
        **settings.CACHES,
        "limits": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                   "LOCATION": f"redis://127.0.0.1:{free_port()}/0"},
    }
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "RATE_LIMIT_CACHE": "limits",
                              "RATE_LIMITS": {"portal": (5, 60)}}
    return "limits"


def test_a_dead_cache_limits_per_process_with_one_warning_per_cool_down(
    nomos: Any, alice: Any, acme: Any, dead_cache: str, clock: Clock, caplog: Any
) -> None:
    client = logged_in(alice)
    with caplog.at_level(logging.WARNING, logger="nomos_billing.ratelimit"):
        answers = [client.get(PORTAL).status_code for _ in range(50)]
        assert logged_in(acme).get(PORTAL).status_code == 302
        warnings = [r for r in caplog.records if "failed" in r.getMessage()]
        assert len(warnings) == 1 and "'limits'" in warnings[0].getMessage()
        clock.now += ratelimit.CACHE_RETRY
        assert client.get(PORTAL).status_code == 429  # the process still remembers
    assert answers == [302] * 5 + [429] * 45
    warnings = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(warnings) == 2  # the cache was tried again after the cool-down
    assert nomos.count(MAGIC) == 5 + 1


# -- the counter ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "count", "limit", "into", "expected"),
    [
        (0, 10, 10, 0.0, 60 + 6),  # full window: next one, until 10 * (1 - t/60) <= 9
        (0, 10, 10, 59.5, 7),  # 0.5 s to the window's end, then 6 s: ceil(6.5)
        (10, 0, 10, 0.0, 6),  # previous window full, this one empty
        (20, 5, 10, 30.0, 18),  # 20 * (1 - t/60) <= 4 -> t >= 48
        (0, 1, 1, 10.0, 110),
    ],
)
def test_retry_after_is_when_one_more_fits(before, count, limit, into, expected):
    assert ratelimit.retry_after(before, count, limit, 60, into) == expected


@pytest.mark.parametrize("limit", [1, 3, 10])
@pytest.mark.parametrize("start", [0.0, 17.3, 59.9])
def test_after_the_retry_after_one_more_fits_and_not_a_second_earlier(limit, start):
    from django.core.cache.backends.locmem import LocMemCache

    cache = LocMemCache(f"ratelimit-test-{limit}-{start}", {})  # a name is a shared store
    cache.clear()
    now = T0 + start
    while ratelimit.sliding_window(cache, "x", limit, 60, now) is None:
        pass
    wait = ratelimit.sliding_window(cache, "x", limit, 60, now)
    assert wait is not None
    assert ratelimit.sliding_window(cache, "x", limit, 60, now + wait - 1) is not None
    assert ratelimit.sliding_window(cache, "x", limit, 60, now + wait) is None


def test_refused_requests_are_not_counted():
    from django.core.cache.backends.locmem import LocMemCache

    cache = LocMemCache("ratelimit-test-refused", {})
    cache.clear()
    results = [ratelimit.sliding_window(cache, "y", 3, 60, T0 + 1) for _ in range(100)]
    assert results[:3] == [None] * 3
    assert cache.get(f"{ratelimit.KEY_PREFIX}y:{int(T0 // 60)}") == 3


def test_anonymous_users_are_not_counted(settings: Any) -> None:
    from django.contrib.auth.models import AnonymousUser

    limits(settings, portal=(1, 60))
    for _ in range(5):
        ratelimit.hit(AnonymousUser(), "portal")


# -- settings --------------------------------------------------------------------------------


def test_rate_limit_setting_keeps_defaults_for_scopes_left_out_and_wrong_values(settings):
    limits(settings, portal=[3, 30], signup="lots")
    assert nomos_settings.rate_limit("portal") == (3, 30)
    assert nomos_settings.rate_limit("signup") == DEFAULTS["RATE_LIMITS"]["signup"]
    default = DEFAULTS["RATE_LIMITS"]["recent_checkout"]
    assert nomos_settings.rate_limit("recent_checkout") == default
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "RATE_LIMITS": "none"}
    assert nomos_settings.rate_limit("portal") == DEFAULTS["RATE_LIMITS"]["portal"]


def test_json_answers_from_the_settings_round_trip(settings):
    # The reliability servers pass settings as JSON: lists, not tuples.
    limits(settings, **json.loads('{"portal": [2, 10], "signup": null}'))
    assert nomos_settings.rate_limit("portal") == (2, 10)
    assert nomos_settings.rate_limit("signup") is None
