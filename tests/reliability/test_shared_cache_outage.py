"""The token cache failing: clicks and webhooks go on without it.

With the cache that holds the token, the breaker and the shared failure memory unreachable (a
backend that raises on every call; a real Redis stopped mid-run), every click still answers 302
to the portal and every webhook 200: the process fetches one token and shares it between its
requests, keeps its own breaker, and logs one WARNING naming the cache alias.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.core.cache import caches
from django.test import Client

from nomos_billing import breaker, shared_cache
from nomos_billing.client import reset_client
from nomos_billing.conf import nomos_settings
from nomos_billing.models import WebhookEvent
from nomos_billing.sandbox import Fault, seed
from nomos_billing.testing import make_event, post_event
from tests.broken_cache import BrokenCache
from tests.ports import free_port
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.django_db, pytest.mark.live]

TOKEN = "POST /oauth/token"
MAGIC = "POST /admin/magic_link"
PORTAL = "/nomos/portal/"


@pytest.fixture
def alice_client(linked_alice: Any) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(linked_alice)
    return client


def use_cache(settings: Any, alias: str, config: dict[str, Any], **nomos: Any) -> None:
    """TOKEN_CACHE pointed at ``alias``, with the breaker on as in production."""
    settings.CACHES = {**settings.CACHES, alias: config}
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TOKEN_CACHE": alias,
                              "BREAKER_FAILURES": 3, "MAX_RETRIES": 0, **nomos}
    shared_cache.reset()
    breaker.reset()
    reset_client()


def cache_warnings(caplog: Any) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "nomos_billing.shared_cache" and r.levelno == logging.WARNING]


def click(client: Client, nomos: Any) -> int:
    response = client.get(PORTAL)
    if response.status_code == 302:
        assert urlsplit(response["Location"]).netloc == urlsplit(nomos.portal_origin).netloc
    return response.status_code


def deliver(client: Client) -> int:
    event = make_event("subscription.created", {"subscription": seed.ALICE_SUBSCRIPTION})
    status = post_event(client, event).status_code
    if status == 200:
        assert WebhookEvent.objects.get(event_id=event["id"]).status == "processed"
    return status


# -- a backend that raises on every call --------------------------------------------------------


@pytest.fixture
def broken(settings: Any, nomos: Any) -> Iterator[type[BrokenCache]]:
    BrokenCache.calls, BrokenCache.broken = 0, True
    use_cache(settings, "broken", {"BACKEND": "tests.broken_cache.BrokenCache"})
    yield BrokenCache
    BrokenCache.broken = True


def test_clicks_and_webhooks_work_with_a_cache_that_raises(broken, nomos, alice_client, client,
                                                           caplog):
    statuses = [click(alice_client, nomos) for _ in range(5)]
    statuses += [deliver(client) for _ in range(3)]

    assert statuses == [302] * 5 + [200] * 3
    assert nomos.count(TOKEN) == 1  # one token, shared by the process's requests
    assert broken.calls >= 1  # the cache was tried, and failed
    [warning] = cache_warnings(caplog)
    assert "'broken'" in warning and "ConnectionError" in warning
    assert "127.0.0.1:1" not in warning  # the exception's text (a URL) is never logged


def test_a_failing_cache_is_tried_again_after_a_while_and_warned_about_once(
        broken, nomos, alice_client, caplog, monkeypatch):
    now = [time.monotonic()]
    monkeypatch.setattr(shared_cache.time, "monotonic", lambda: now[0])
    assert click(alice_client, nomos) == 302
    tried = broken.calls

    reset_client()  # a renewal: the token is looked up in the cache again
    assert click(alice_client, nomos) == 302
    assert broken.calls == tried  # within RETRY_AFTER the cache is not asked

    now[0] += shared_cache.RETRY_AFTER
    reset_client()
    assert click(alice_client, nomos) == 302
    assert broken.calls == tried + 1  # asked once more, failed again
    assert len(cache_warnings(caplog)) == 1  # still one warning for this cool-down

    now[0] += shared_cache.WARN_EVERY
    reset_client()
    assert click(alice_client, nomos) == 302
    assert len(cache_warnings(caplog)) == 2


def test_the_breaker_opens_per_process_while_the_cache_raises(broken, nomos, alice_client):
    nomos.add_fault(MAGIC, Fault(status=500), times=None)

    statuses = [click(alice_client, nomos) for _ in range(6)]

    assert statuses == [503] * 6
    assert nomos.count(MAGIC) == 3  # BREAKER_FAILURES; the other clicks never left the site
    assert breaker.state().open


def test_a_cache_that_answers_again_is_used_again(broken, nomos, alice_client, caplog,
                                                  monkeypatch):
    now = [time.monotonic()]
    monkeypatch.setattr(shared_cache.time, "monotonic", lambda: now[0])
    assert click(alice_client, nomos) == 302
    broken.broken = False
    now[0] += shared_cache.RETRY_AFTER
    reset_client()

    assert click(alice_client, nomos) == 302

    assert nomos.count(TOKEN) == 2  # the token learned alone was dropped with the stand-in
    assert not shared_cache.token_cache().failing
    assert any("answers again" in r.getMessage() for r in caplog.records
               if r.name == "nomos_billing.shared_cache" and r.levelno == logging.INFO)
    reset_client()
    assert click(alice_client, nomos) == 302
    assert nomos.count(TOKEN) == 2  # now from the shared cache


def test_a_missing_counter_is_an_answer_not_a_cache_failure(settings, caplog):
    use_cache(settings, "local", {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                  "LOCATION": "nomos-incr"})
    cache = shared_cache.token_cache()
    with pytest.raises(ValueError):
        cache.incr("nomos_billing:test:missing")
    assert not cache.failing
    assert cache_warnings(caplog) == []


# -- a real Redis, stopped mid-run -------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``redis-server`` on a spare loopback port, no persistence; stopped at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    redis = pytest.importorskip("redis", reason="redis-py is in the test extra")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    proc.port = port  # type: ignore[attr-defined]
    ping = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    try:
        for _ in range(100):
            try:
                if ping.ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            pytest.fail("redis-server did not answer within 5 s")
        yield proc
    finally:
        ping.close()
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)


# Clicks before, during and after the outage: more than ten calls a second.
@pytest.mark.sandbox_rate_limit(0)
def test_redis_stopped_mid_run(redis_server, settings, nomos, alice_client, client, caplog):
    pytest.importorskip("redis")
    use_cache(settings, "nomos", {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": f"redis://127.0.0.1:{redis_server.port}/0",
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    })
    before = [click(alice_client, nomos) for _ in range(3)] + [deliver(client) for _ in range(2)]
    assert before == [302] * 3 + [200] * 2
    assert caches["nomos"].get(nomos_settings.token_cache_key) is not None  # shared in Redis
    assert cache_warnings(caplog) == []

    redis_server.terminate()
    redis_server.wait(timeout=10)
    # A worker that starts (or renews its token) now: everything it needs is in the dead cache.
    reset_client()
    breaker.reset()
    tokens = nomos.count(TOKEN)
    started = time.monotonic()
    after = [click(alice_client, nomos) for _ in range(5)] + [deliver(client) for _ in range(3)]
    elapsed = time.monotonic() - started

    assert after == [302] * 5 + [200] * 3
    assert nomos.count(TOKEN) == tokens + 1  # one fetch, shared inside the process
    [warning] = cache_warnings(caplog)
    assert "'nomos'" in warning and str(redis_server.port) not in warning
    assert elapsed < 5, f"8 requests took {elapsed:.2f} s without the cache"


def test_redis_that_hangs_costs_a_socket_timeout_not_the_budget(redis_server, settings, nomos,
                                                                alice_client, client, caplog):
    """Black-holed rather than stopped: the socket timeouts the deploy docs recommend bound the
    wait, and the process then keeps away from the cache for ``RETRY_AFTER``."""
    pytest.importorskip("redis")
    with TcpProxy(("127.0.0.1", redis_server.port)) as proxy:
        use_cache(settings, "nomos", {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{proxy.port}/0",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        })
        before = [click(alice_client, nomos) for _ in range(2)] + [deliver(client)]
        assert before == [302, 302, 200]
        proxy.set_mode("swallow")
        reset_client()
        breaker.reset()
        answers, slowest = [], 0.0
        for request in [click] * 5 + [deliver] * 3:
            started = time.monotonic()
            answers.append(request(alice_client, nomos) if request is click else request(client))
            slowest = max(slowest, time.monotonic() - started)
    assert answers == [302] * 5 + [200] * 3
    [warning] = cache_warnings(caplog)
    assert "'nomos'" in warning and "Timeout" in warning, warning
    # Each request within its budget (CLICK_BUDGET 5 s): one socket timeout, not one per call.
    assert slowest < nomos_settings.CLICK_BUDGET, slowest
