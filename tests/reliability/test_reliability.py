"""Reliability through a real server: gunicorn on loopback, started and stopped by each test,
sharing the test database (PostgreSQL) and cache with the suite.

- a chunked delivery (no Content-Length) is read and processed;
- 429 with Retry-After 5 on the token and the fetch, under gunicorn's --timeout 30 and the
  default budgets: Nomos gets our 503 (not gunicorn's), the event is failed, the next delivery
  processes it;
- a worker killed with SIGKILL mid-processing: the event is processed exactly once, by the next
  delivery after the claim timeout, by ``nomos_replay --stuck``, or, with no redelivery, by the
  takeover that deliveries of other events carry (within 2 x CLAIM_TIMEOUT); a redelivery
  during the live claim is answered 409;
- an outage window with the breaker: every click is answered (503 page), and only the
  breaker's few calls reach Nomos.

Nothing here is timed: loops wait for states (with generous bounds), assertions are about
answers, rows and the requests the sandbox counted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from django.core.management import call_command
from django.db import connection
from django.test import Client

from nomos_billing.models import NomosCustomer, NomosSubscription, WebhookEvent
from nomos_billing.sandbox import Fault, seed
from nomos_billing.testing import encode_event, make_event, signature_headers
from tests.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]
SUB_GET = "GET /subscriptions/{id}"
TOKEN = "POST /oauth/token"
MAGIC = "POST /admin/magic_link"
#: Production-like client settings (tests/settings.py shortens them for speed).
DEFAULTS = {"TIMEOUT": [3.05, 10], "MAX_RETRY_WAIT": 5, "MAX_RETRIES": 3}

#: The running servers' master processes, by URL.
SERVERS: dict[str, subprocess.Popen[str]] = {}

pytestmark = [pytest.mark.postgres, pytest.mark.live, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _needs_postgres_and_gunicorn() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("a gunicorn server shares the test database only on PostgreSQL "
                    "(DATABASE_URL=postgres://...; .ci/run does)")
    pytest.importorskip("gunicorn", reason="gunicorn is in the test extra: pip install -e .[test]")


def _free_port() -> int:

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url(host: str | None = None, port: int | None = None, **options: Any) -> str:
    """The test database's URL (django-environ), through ``host:port`` when given."""
    db = connection.settings_dict
    url = (f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{host or db['HOST']}:"
           f"{port or db['PORT'] or 5432}/{db['NAME']}")
    return url + ("?" + urlencode(options) if options else "")


@contextmanager
def gunicorn(sandbox_url: str, *, workers: int = 1, timeout: int = 30, database: str = "",
             logged_outage: bool = False, **settings: Any) -> Iterator[str]:
    """A gunicorn with the suite's settings on a free loopback port; yields its base URL.

    Its output must hold no traceback, or with ``logged_outage`` (the click's database outage
    is logged with its traceback) no 500 and no killed worker.
    """
    port = _free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.server_settings",
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": database or database_url(),
        "NOMOS_TEST_API_BASE_URL": sandbox_url,
        "NOMOS_TEST_SETTINGS": json.dumps({**DEFAULTS, **settings}),
    }
    env.pop("PYTHONDEVMODE", None)
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "tests.wsgi:application", "--bind",
         f"127.0.0.1:{port}", "--workers", str(workers), "--timeout", str(timeout),
         "--graceful-timeout", "1", "--log-level", "warning"],
        # A file, not a pipe: a full pipe nobody reads would block the workers' logging.
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    SERVERS[url] = process
    try:
        _wait_until(lambda: _answers(url), what="gunicorn to listen", process=process)
        yield url
    finally:
        SERVERS.pop(url, None)
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.seek(0)
        out = log.read()
        log.close()
        assert "WORKER TIMEOUT" not in out, out
        if logged_outage:
            assert "Internal Server Error" not in out, out
        else:
            assert "Traceback" not in out, out


def _answers(url: str) -> bool:
    try:
        requests.get(url + "/nomos/webhook/", timeout=5)
    except requests.RequestException:
        return False
    return True


def _wait_until(condition: Any, *, what: str, bound: float = 120,
                process: subprocess.Popen[str] | None = None) -> None:
    # A bound against hanging forever, not a performance threshold.
    end = time.monotonic() + bound
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited while waiting for {what}")
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def deliver(url: str, event: dict[str, Any], **kwargs: Any) -> requests.Response:
    body = encode_event(event)
    headers = {"Content-Type": "application/json", **signature_headers(body)}
    return requests.post(url + "/nomos/webhook/", data=body, headers=headers, timeout=60,
                         **kwargs)


def alice_event() -> dict[str, Any]:
    return make_event("subscription.updated", {"subscription": seed.ALICE_SUBSCRIPTION})


def status_of(event: dict[str, Any]) -> str | None:
    row = WebhookEvent.objects.filter(event_id=event["id"]).first()
    return row.status if row else None


def test_chunked_delivery_is_read_and_processed(nomos):
    event = alice_event()
    body = encode_event(event)
    headers = {"Content-Type": "application/json", **signature_headers(body)}
    with gunicorn(nomos.base_url) as url:
        # A generator body makes requests send Transfer-Encoding: chunked.
        response = requests.post(url + "/nomos/webhook/", data=iter([body[:10], body[10:]]),
                                 headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert status_of(event) == "processed"
    assert NomosSubscription.objects.filter(subscription_id=seed.ALICE_SUBSCRIPTION).exists()


def test_429_with_retry_after_5_on_token_and_fetch_gets_our_503_then_redelivery_works(nomos):
    nomos.add_fault(TOKEN, Fault(status=429, retry_after=5))
    nomos.add_fault(SUB_GET, Fault(status=429, retry_after=5))
    event = alice_event()
    with gunicorn(nomos.base_url, timeout=30) as url:
        first = deliver(url, event)
        assert first.status_code == 503, first.text
        assert "redeliver" in first.text  # ours, not gunicorn's error page
        assert status_of(event) == "failed"
        second = deliver(url, event)
    assert second.status_code == 200, second.text
    assert status_of(event) == "processed"
    assert nomos.count(SUB_GET) == 2


@pytest.mark.parametrize("takeover", ["next delivery", "nomos_replay --stuck"])
def test_worker_killed_mid_processing_is_processed_exactly_once(takeover, nomos, settings):
    claim_timeout = 4
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "CLAIM_TIMEOUT": claim_timeout,
                              "API_BASE_URL": nomos.base_url}
    # The first fetch hangs (longer than any budget), so the worker is killed while it holds
    # the claim; the second is served.
    nomos.add_fault(SUB_GET, Fault(hang=60))
    event = alice_event()
    with gunicorn(nomos.base_url, CLAIM_TIMEOUT=claim_timeout, WEBHOOK_BUDGET=3) as url:
        pool = ThreadPoolExecutor(1)
        first = pool.submit(deliver, url, event)
        _wait_until(lambda: status_of(event) == "processing" and nomos.count(SUB_GET) == 1,
                    what="the first delivery to hold the claim")
        for pid in _children(SERVERS[url].pid):
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(requests.ConnectionError):
            first.result(timeout=60)
        pool.shutdown()
        assert status_of(event) == "processing"  # left behind by the dead worker
        stored = WebhookEvent.objects.get(event_id=event["id"])
        if takeover == "next delivery":
            # Nomos redelivers; until the claim is stale the answer is 409 and nothing is
            # fetched again.
            answers = []
            while status_of(event) != "processed":
                answers.append(deliver(url, event).status_code)
                assert len(answers) < 200
                time.sleep(0.2)
            # The last answer is 200 when that delivery took the stale claim itself, or 409
            # when the takeover after recording it (takeover.py) processed the event.
            assert set(answers[:-1]) <= {409} and answers[-1] in (200, 409)
        else:
            _wait_until(lambda: _stale(stored, claim_timeout), what="the claim to go stale")
            out = StringIO()
            call_command("nomos_replay", "--stuck", stdout=out)
            assert "stuck in processing" in out.getvalue()
    stored.refresh_from_db()
    assert (stored.status, stored.attempts) == ("processed", 2)
    assert nomos.count(SUB_GET) == 2  # the killed fetch and the one that completed


def test_worker_killed_mid_event_is_taken_over_without_a_redelivery(nomos):
    claim_timeout = 6
    # The first fetch hangs: the worker is killed while it holds the claim.
    nomos.add_fault(SUB_GET, Fault(hang=60))
    event = alice_event()
    with gunicorn(nomos.base_url, workers=2, CLAIM_TIMEOUT=claim_timeout,
                  WEBHOOK_BUDGET=5) as url:
        pool = ThreadPoolExecutor(1)
        first = pool.submit(deliver, url, event)
        _wait_until(lambda: status_of(event) == "processing" and nomos.count(SUB_GET) == 1,
                    what="the first delivery to hold the claim")
        # A redelivery meanwhile reaches the other worker: not a 2xx, so Nomos tries again.
        during = deliver(url, event)
        assert during.status_code == 409, during.text
        assert 1 <= int(during.headers["Retry-After"]) <= claim_timeout
        for pid in _children(SERVERS[url].pid):
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(requests.ConnectionError):
            first.result(timeout=60)
        pool.shutdown()
        assert status_of(event) == "processing"
        # The site keeps getting other events; this one is never delivered again.
        others = []
        while status_of(event) != "processed":
            other = make_event("invoice.paid", {"invoice": f"inv_{len(others)}"})
            others.append(deliver(url, other).status_code)
            assert time.monotonic() - killed < 4 * claim_timeout, "not taken over"
            time.sleep(0.2)
        took = time.monotonic() - killed
    assert took < 2 * claim_timeout, took
    assert set(others) == {200}
    stored = WebhookEvent.objects.get(event_id=event["id"])
    assert (stored.status, stored.attempts, stored.deliveries) == ("processed", 2, 2)
    assert nomos.count(SUB_GET) == 2  # the killed fetch and the one that completed


def _stale(event: WebhookEvent, seconds: float) -> bool:
    from django.utils import timezone

    event.refresh_from_db()
    return event.claimed_at is not None and (
        timezone.now() - event.claimed_at).total_seconds() > seconds


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fp:
        return int(fp.read().rsplit(")", 1)[1].split()[1])


def _children(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if _parent(int(entry)) == pid:
                    children.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    assert children, "gunicorn has no worker"
    return children


def test_outage_window_with_the_breaker_answers_every_click(nomos, django_user_model):
    user = django_user_model.objects.create_user("alice", "alice@example.com", "pw")
    NomosCustomer.objects.create(user=user, customer_id=seed.ALICE, email="alice@example.com")
    client = Client()
    client.force_login(user)
    cookies = {"sessionid": client.cookies["sessionid"].value}
    # 31 clicks of one user: more than RATE_LIMITS allows (its own tests: test_ratelimit.py).
    with gunicorn(nomos.base_url, workers=3, CLICK_BUDGET=2, BREAKER_FAILURES=3,
                  BREAKER_COOLDOWN=60, RATE_LIMITS={"portal": None}) as url:
        warm = requests.get(url + "/nomos/portal/", cookies=cookies, allow_redirects=False,
                            timeout=30)
        assert warm.status_code == 302  # token fetched, link minted: Nomos is up
        nomos.reset_counts()
        nomos.add_fault(MAGIC, Fault(hang=30), times=None)  # Nomos hangs

        def click(_: int) -> int:
            return requests.get(url + "/nomos/portal/", cookies=cookies, allow_redirects=False,
                                timeout=60).status_code

        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(click, range(30)))
    assert statuses == [503] * 30
    # Up to the threshold plus the calls already in flight when it opened; not one per click.
    assert nomos.count(MAGIC) <= 3 + 6


def _timed(call: Any) -> tuple[int, float, requests.Response]:
    started = time.monotonic()
    response = call()
    return response.status_code, time.monotonic() - started, response


def test_database_refusing_then_black_holed_answers_503_within_the_budgets(
        nomos, django_user_model):
    user = django_user_model.objects.create_user("alice", "alice@example.com", "pw")
    NomosCustomer.objects.create(user=user, customer_id=seed.ALICE, email="alice@example.com")
    client = Client()
    client.force_login(user)
    cookies = {"sessionid": client.cookies["sessionid"].value}
    db = connection.settings_dict
    click_budget, webhook_budget = 5, 20  # the defaults (conf.py)
    with TcpProxy((db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432))) as proxy, gunicorn(
            nomos.base_url, workers=3, CLICK_BUDGET=click_budget, WEBHOOK_BUDGET=webhook_budget,
            logged_outage=True,
            # What the Production docs ask for: a connect timeout and a statement timeout.
            database=database_url("127.0.0.1", proxy.port, connect_timeout=2,
                                  options="-c statement_timeout=5000")) as url:
        workers = set(_children(SERVERS[url].pid))

        def click(_: object = None) -> tuple[int, float, requests.Response]:
            return _timed(lambda: requests.get(url + "/nomos/portal/", cookies=cookies,
                                               allow_redirects=False, timeout=60))

        def webhook(event: dict[str, Any]) -> tuple[int, float, requests.Response]:
            return _timed(lambda: deliver(url, event))

        assert click()[0] == 302  # through the proxy
        assert webhook(alice_event())[0] == 200
        refused: list[dict[str, Any]] = []
        for mode in ("refuse", "swallow"):
            proxy.set_mode(mode)
            events = [alice_event() for _ in range(6)]
            refused += events
            with ThreadPoolExecutor(3) as pool:  # one request per worker at a time
                clicks = list(pool.map(click, range(6)))
                hooks = list(pool.map(webhook, events))
            assert [c[0] for c in clicks] == [503] * 6, (mode, clicks)
            assert [h[0] for h in hooks] == [503] * 6, (mode, hooks)
            assert all(h[2].headers.get("Retry-After") for h in hooks)
            slowest = (max(c[1] for c in clicks), max(h[1] for h in hooks))
            assert slowest[0] < click_budget and slowest[1] < webhook_budget, (mode, slowest)
        proxy.set_mode("forward")
        # Nomos redelivers: nothing was lost, and the site is back.
        assert webhook(refused[-1])[0] == 200
        assert click()[0] == 302
        assert set(_children(SERVERS[url].pid)) == workers  # no worker was killed
    assert status_of(refused[-1]) == "processed"
    assert not WebhookEvent.objects.filter(event_id__in=[e["id"] for e in refused[:-1]])
