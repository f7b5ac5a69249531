"""The shared access token: one per cache, renewed single-flight, never leaked."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
from django.core.cache import caches

from nomos_billing import budget, tokens
from nomos_billing import client as client_module
from nomos_billing.client import NomosClient, get_client
from nomos_billing.conf import nomos_settings
from nomos_billing.exceptions import NomosUnavailable
from nomos_billing.sandbox import Fault
from nomos_billing.tokens import AccessToken

pytestmark = pytest.mark.django_db(databases=[])

TOKEN = "POST /oauth/token"
SUB = "GET /subscriptions/{id}"
REPO = Path(__file__).resolve().parents[2]


def test_cache_key_is_namespaced_per_client_and_base_url_and_hashed(settings):
    settings.NOMOS_BILLING = {"CLIENT_ID": "client-a", "API_BASE_URL": "https://a.example"}
    key_a = nomos_settings.token_cache_key
    settings.NOMOS_BILLING = {"CLIENT_ID": "client-b", "API_BASE_URL": "https://a.example"}
    key_b = nomos_settings.token_cache_key
    settings.NOMOS_BILLING = {"CLIENT_ID": "client-a", "API_BASE_URL": "https://b.example"}
    key_c = nomos_settings.token_cache_key
    assert len({key_a, key_b, key_c}) == 3
    assert all("client-" not in k and "example" not in k for k in (key_a, key_b, key_c))


def test_token_lives_in_the_configured_cache(nomos):
    get_client().get_subscription("sub_sandbox_alice")
    stored = caches["default"].get(nomos_settings.token_cache_key)
    assert stored["value"] in nomos.issued_tokens()


@pytest.mark.parametrize(
    ("seconds_later", "token_requests"),
    # 3600 s token, 300 s margin: renewed inside the margin, reused before it.
    [(3200, 1), (3301, 2)],
)
def test_token_is_renewed_only_inside_the_refresh_margin(nomos, seconds_later, token_requests):
    client = get_client()
    client.get_subscription("sub_sandbox_alice")
    real_time = time.time
    with mock.patch("nomos_billing.tokens.time.time", lambda: real_time() + seconds_later):
        client.get_subscription("sub_sandbox_alice")
    assert nomos.count(TOKEN) == token_requests


# Fifty threads at once: one token request, not pacing.
@pytest.mark.sandbox_rate_limit(0)
def test_fifty_threads_at_expiry_cause_exactly_one_token_request(nomos, monkeypatch):
    client = get_client()
    client.get_subscription("sub_sandbox_alice")
    # The renewal is answered only once the 49 other threads are waiting for it: every thread
    # finds the token expired while one renews, whatever the machine's speed.
    waiting: set[int] = set()
    all_waiting = threading.Event()
    real_sleep, real_time = time.sleep, time.time

    def poll(seconds: float) -> None:
        waiting.add(threading.get_ident())
        if len(waiting) >= 49:
            all_waiting.set()
        real_sleep(seconds)

    fetch = client.tokens._fetch

    def held_fetch():
        assert all_waiting.wait(30), f"only {len(waiting)} threads waited for the renewal"
        return fetch()

    monkeypatch.setattr(client.tokens, "_fetch", held_fetch)
    # An hour later the token has expired, in this process's copy and in the cache alike;
    # the waiters' own clock stands still, so none gives up on the renewer.
    later = SimpleNamespace(time=lambda: real_time() + 3700, monotonic=lambda: 0.0, sleep=poll)
    monkeypatch.setattr(tokens, "time", later)
    monkeypatch.setattr(client_module, "time", later)  # the new token's expiry
    barrier = threading.Barrier(50)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            barrier.wait()
            client.get_subscription("sub_sandbox_alice")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert all_waiting.is_set()
    assert nomos.count(TOKEN) == 2  # the first call's token, then exactly one renewal
    assert nomos.count(SUB) == 51


def test_a_fresh_token_costs_no_cache_read(nomos):
    client = get_client()
    client.get_subscription("sub_sandbox_alice")
    cache = caches["default"]
    with mock.patch.object(cache, "get", wraps=cache.get) as cache_get:
        for _ in range(5):
            client.get_subscription("sub_sandbox_alice")
    assert cache_get.call_count == 0
    assert nomos.count(TOKEN) == 1
    assert nomos.count(SUB) == 6


def test_inside_the_margin_a_process_adopts_the_token_another_process_renewed(nomos):
    # Two clients stand for two worker processes sharing one cache.
    worker_a, worker_b = NomosClient(), NomosClient()
    worker_a.get_subscription("sub_sandbox_alice")
    real_time = time.time
    with mock.patch("nomos_billing.tokens.time.time", lambda: real_time() + 3400):
        worker_b.get_subscription("sub_sandbox_alice")  # renews: the cached token is in its margin
        worker_a.get_subscription("sub_sandbox_alice")  # reads the cache again, finds b's token
        assert worker_a.tokens.get() == worker_b.tokens.get()
    assert nomos.count(TOKEN) == 2
    assert nomos.count(SUB) == 3


def test_a_revoked_token_is_dropped_from_the_process_copy_too(nomos):
    worker_a, worker_b = NomosClient(), NomosClient()
    worker_a.get_subscription("sub_sandbox_alice")
    worker_b.get_subscription("sub_sandbox_alice")
    nomos.expire_tokens()
    worker_a.get_subscription("sub_sandbox_alice")  # 401, renews once
    worker_b.get_subscription("sub_sandbox_alice")  # 401, adopts a's new token from the cache
    worker_a.get_subscription("sub_sandbox_alice")
    assert nomos.count(TOKEN) == 2
    assert nomos.count(SUB) == 7  # five calls, two of them answered 401 and retried once
    assert worker_a.tokens.get() == worker_b.tokens.get()


def test_waiters_take_over_when_the_renewal_fails(nomos):
    client = get_client()
    nomos.add_fault(TOKEN, Fault(status=400), times=1)
    results: list[object] = []

    def call() -> None:
        try:
            results.append(client.get_subscription("sub_sandbox_alice")["id"])
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results.count("sub_sandbox_alice") >= 4
    assert nomos.count(TOKEN) == 2  # the failed one and one good one, not five


def test_a_request_out_of_time_does_not_fail_the_next_callers(nomos, settings):
    # Failed token fetches are shared (with the breaker on) so that waiters fail at once; a
    # request that merely ran out of its own budget is no such failure.
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "BREAKER_FAILURES": 5}
    with budget.limit(0), pytest.raises(budget.BudgetExhausted):
        get_client().get_subscription("sub_sandbox_alice")
    assert nomos.count(TOKEN) == 0

    assert get_client().get_subscription("sub_sandbox_alice")["id"] == "sub_sandbox_alice"
    assert nomos.count(TOKEN) == 1


def test_a_rejected_token_already_replaced_by_another_worker_is_kept(nomos):
    client = get_client()
    client.get_subscription("sub_sandbox_alice")
    current = client.tokens.get()
    stale = AccessToken("some-older-token", time.time() + 100)
    client.tokens.invalidate(stale)
    assert client.tokens.cached() == current


def test_token_endpoint_down_is_unavailable(nomos):
    nomos.add_fault(TOKEN, Fault(status=503), times=None)
    with pytest.raises(NomosUnavailable):
        get_client().get_subscription("sub_sandbox_alice")


def _redis_cache_url() -> str | None:
    url = os.environ.get("CACHE_URL", "")
    return url if url.startswith("redis") else None


# Twenty calls from two processes at once: one token, not pacing.
@pytest.mark.sandbox_rate_limit(0)
@pytest.mark.redis
@pytest.mark.skipif(_redis_cache_url() is None, reason="CACHE_URL is not a Redis URL")
def test_two_processes_sharing_the_redis_cache_use_one_token(nomos):
    script = textwrap.dedent(
        f"""
        import django, os
        from django.conf import settings
        settings.configure(
            CACHES={{"default": {{"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                 "LOCATION": {_redis_cache_url()!r}}}}},
            INSTALLED_APPS=["nomos_billing"],
            NOMOS_BILLING={{"CLIENT_ID": "sandbox-client", "CLIENT_SECRET": "sandbox-secret",
                            "API_BASE_URL": {nomos.base_url!r}}},
        )
        django.setup()
        from nomos_billing.client import NomosClient, get_client
        for _ in range(10):
            get_client().get_subscription("sub_sandbox_alice")
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert nomos.count(SUB) == 20
    assert nomos.count(TOKEN) == 1


def test_another_process_drops_the_token_nomos_rejected_from_the_shared_cache(nomos):
    from nomos_billing.client import reset_client

    first = get_client()
    first.get_subscription("sub_sandbox_alice")
    rejected = first.tokens.cached()
    reset_client()  # another process: the shared cache holds the token, its memory does not

    get_client().tokens.invalidate(rejected)

    assert get_client().tokens.cached() is None
    get_client().get_subscription("sub_sandbox_alice")
    assert nomos.count(TOKEN) == 2
