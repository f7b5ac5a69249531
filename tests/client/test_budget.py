"""One time budget per request: retries, backoff sleeps and token waits end by one deadline;
a request that runs out answers 503 at once and leaves nothing in progress.

Judged by what the sandbox counted (how many attempts were made) and by the answers and rows,
never by wall-clock thresholds."""

from __future__ import annotations

import random
from typing import Any

import pytest
from django.test import Client

from nomos_billing import budget
from nomos_billing.checks import check_settings
from nomos_billing.client import get_client
from nomos_billing.models import WebhookEvent
from nomos_billing.retry import build_retry
from nomos_billing.sandbox import Fault, seed
from nomos_billing.testing import make_event, post_event

TOKEN = "POST /oauth/token"
SUB_GET = "GET /subscriptions/{id}"
MAGIC = "POST /admin/magic_link"


def configure(settings: Any, **values: Any) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, **values}


# -- the budget itself ---------------------------------------------------------------------------


def test_no_budget_outside_a_request():
    assert budget.remaining() is None
    assert budget.may_wait(3600)
    assert budget.timeouts(3.05, 10) == (3.05, 10)


def test_nested_budgets_keep_the_earlier_deadline():
    with budget.limit(10):
        with budget.limit(100):
            left = budget.remaining()
            assert left is not None and left <= 10
        with budget.limit(1):
            left = budget.remaining()
            assert left is not None and left <= 1
    assert budget.remaining() is None


def test_timeouts_are_cut_to_the_time_left_and_refused_when_none_is_left():
    with budget.limit(2):
        connect, read = budget.timeouts(3.05, 10)
        assert connect <= 2 and read <= 2
    with budget.limit(0), pytest.raises(budget.BudgetExhausted):
        budget.timeouts(3.05, 10)


def test_a_wait_is_allowed_only_when_another_attempt_still_fits():
    with budget.limit(10):
        budget.timeouts(1, 2)  # this call's attempts take up to 3 s
        assert budget.may_wait(5)
        assert not budget.may_wait(8)


# -- 429 without Retry-After: backoff with jitter, never a tight loop --------------------------


def _retry_after_429s(count: int) -> Any:
    retry = build_retry(max_retries=5, max_wait=30)
    for _ in range(count):
        retry = retry.new(history=(*retry.history, _entry(429)))
    return retry


def _entry(status: int) -> Any:
    from urllib3.util.retry import RequestHistory

    return RequestHistory("GET", "/x", None, status, None)


@pytest.mark.parametrize(("refused", "low", "high"), [(1, 1, 2), (2, 2, 4), (3, 4, 8)])
def test_backoff_after_429_without_retry_after_doubles_with_jitter(refused, low, high,
                                                                    monkeypatch):
    retry = _retry_after_429s(refused)
    monkeypatch.setattr(random, "uniform", lambda a, b: a)
    assert retry.get_backoff_time() == low
    monkeypatch.setattr(random, "uniform", lambda a, b: b)
    assert retry.get_backoff_time() == high


def test_backoff_after_a_5xx_is_urllib3s(monkeypatch):
    retry = build_retry(max_retries=5, max_wait=30)
    retry = retry.new(history=(_entry(503),))
    assert retry.get_backoff_time() == 0  # urllib3 retries the first 5xx at once


@pytest.fixture
def alice(linked_alice: Any) -> Any:
    return linked_alice


@pytest.mark.django_db
def test_click_against_429_without_retry_after_makes_two_attempts_then_shows_503(
    alice, nomos, settings
):
    # A click's attempts take up to 2 s; the first backoff is 1-2 s, the second 2-4 s: the
    # second retry and its attempt can never fit the 4.5 s budget, the first always does.
    configure(settings, TIMEOUT=(1.0, 1.0), CLICK_BUDGET=4.5, MAX_RETRY_WAIT=5)
    get_client().tokens.get()  # the token is not what this test is about
    nomos.add_fault(MAGIC, Fault(status=429), times=None)
    client = Client()
    client.force_login(alice)

    response = client.get("/nomos/portal/")

    assert response.status_code == 503
    assert nomos.count(MAGIC) == 2
    # The Retry-After is the backoff we did not wait for (2-4 s), not a made-up constant.
    assert 2 <= int(response["Retry-After"]) <= 4


@pytest.mark.django_db
def test_json_click_against_429_without_retry_after_answers_503_json(alice, nomos, settings):
    configure(settings, TIMEOUT=(1.0, 1.0), CLICK_BUDGET=4.5, MAX_RETRY_WAIT=5)
    get_client().tokens.get()
    nomos.add_fault(MAGIC, Fault(status=429), times=None)
    client = Client()
    client.force_login(alice)

    response = client.post("/nomos/portal/link/")

    assert response.status_code == 503
    assert response.json()["code"] == "unavailable"
    assert nomos.count(MAGIC) == 2


# -- webhooks: give up inside the budget, leave the event failed, process on redelivery ------


@pytest.mark.django_db
def test_429_with_retry_after_on_token_and_fetch_answers_503_within_the_budget(
    nomos, client, settings
):
    # The token's 1 s Retry-After fits and is waited for; the fetch's 5 s does not fit what is
    # left of the 6 s budget (with a 3 s attempt after it), so the delivery gives up at once.
    configure(settings, WEBHOOK_BUDGET=6, MAX_RETRY_WAIT=5)
    nomos.add_fault(TOKEN, Fault(status=429, retry_after=1))
    nomos.add_fault(SUB_GET, Fault(status=429, retry_after=5))
    event = make_event("subscription.created", {"subscription": seed.ALICE_SUBSCRIPTION})

    response = post_event(client, event)

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert (nomos.count(TOKEN), nomos.count(SUB_GET)) == (2, 1)
    stored = WebhookEvent.objects.get()
    assert stored.status == "failed" and stored.claimed_at is None
    assert "429" in stored.last_error

    assert post_event(client, event).status_code == 200
    assert WebhookEvent.objects.get().status == "processed"


@pytest.mark.django_db
def test_hung_fetch_is_cut_at_the_budget_and_stored_as_a_timeout(nomos, client, settings):
    configure(settings, WEBHOOK_BUDGET=1, TIMEOUT=(1.0, 10.0))
    get_client().tokens.get()
    nomos.add_fault(SUB_GET, Fault(hang=5), times=None)
    event = make_event("subscription.created", {"subscription": seed.ALICE_SUBSCRIPTION})

    response = post_event(client, event)

    assert response.status_code == 503
    stored = WebhookEvent.objects.get()
    assert stored.status == "failed"
    assert "in time" in stored.last_error and "connect" not in stored.last_error


@pytest.mark.django_db
def test_token_waiter_stops_at_the_deadline_instead_of_its_own_timeout(nomos, settings):
    from django.core.cache import caches

    client = get_client()
    store = client.tokens
    # Another worker holds the renewal lock and never finishes.
    caches["default"].add(store.key + ":lock", "someone-else", 60)
    with budget.limit(0.3), pytest.raises(budget.BudgetExhausted):
        store.get()
    assert nomos.count(TOKEN) == 0


# -- system checks -------------------------------------------------------------------------------


def _ids(settings: Any, **values: Any) -> set[str]:
    configure(settings, **values)
    return {m.id for m in check_settings()}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"WEBHOOK_BUDGET": 30}, "nomos_billing.W050"),
        ({"WEBHOOK_BUDGET": 20, "CLAIM_TIMEOUT": 20}, "nomos_billing.W051"),
        ({"CLICK_BUDGET": 1, "TIMEOUT": (3.05, 10)}, "nomos_billing.W052"),
        ({"CLICK_BUDGET": 0}, "nomos_billing.E050"),
        ({"CLAIM_TIMEOUT": "a minute"}, "nomos_billing.E050"),
    ],
)
def test_impossible_budget_combinations_are_named_by_a_check(values, expected, settings):
    assert expected in _ids(settings, **values)


def test_default_budgets_pass_the_checks(settings):
    ids = _ids(settings, TIMEOUT=(3.05, 10))
    assert not ids & {"nomos_billing.W050", "nomos_billing.W051", "nomos_billing.W052",
                      "nomos_billing.E050"}


def test_a_wait_that_leaves_exactly_one_attempt_is_allowed(monkeypatch):
    # The clock stands still: the 10 s budget holds a 7 s sleep and a 3 s attempt exactly.
    monkeypatch.setattr(budget.time, "monotonic", lambda: 1000.0)
    with budget.limit(10):
        budget.timeouts(1, 2)
        assert budget.may_wait(7)
        assert not budget.may_wait(7.5)
