"""Slow clients against gunicorn's sync workers, with and without the buffering nginx of the
README's Production section (deploy/nginx.conf, deploy/gunicorn.conf.py), all on loopback:
10 connections sending a webhook body 1 byte every 2 s do not delay a logged-in click behind
nginx (p99 under 1 s with 3 sync workers); straight at gunicorn the same 10 hold every worker
and a click gets no answer.

nginx is Debian's (``apt-get install nginx-light``; .ci/run installs it under CI=true); without
it these tests skip and say so. gunicorn shares the test database (committed rows:
``transaction=True``) and cache, as in test_reliability.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from nomos_billing.models import NomosCustomer
from nomos_billing.sandbox import seed
from tests import slow_clients
from tests.slow_clients import ROOT, SlowBodies, click_times, percentile

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _needs_gunicorn() -> None:
    pytest.importorskip("gunicorn", reason="gunicorn is in the test extra: pip install -e .[test]")
    if connection.vendor not in ("postgresql", "sqlite"):
        pytest.skip(f"gunicorn shares the test database only on PostgreSQL or SQLite, "
                    f"not {connection.vendor}")


@pytest.fixture
def nginx_binary() -> str:
    binary = slow_clients.nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light): the buffering proxy "
                    "of deploy/nginx.conf cannot be tested")
    return binary


def database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    return (f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT'] or 5432}"
            f"/{db['NAME']}")


@pytest.fixture
def server_env(nomos: Any) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.server_settings",
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": database_url(),
        "NOMOS_TEST_API_BASE_URL": nomos.base_url,
        # One user clicks 50 times a minute here: the measurement, not the per-user limit
        # (test_ratelimit.py).
        "NOMOS_TEST_SETTINGS": json.dumps({"RATE_LIMITS": {"portal": None}}),
    }
    env.pop("PYTHONDEVMODE", None)
    return env


@pytest.fixture
def session_key(django_user_model: Any) -> str:
    user = django_user_model.objects.create_user("alice", "alice@example.com", "pw")
    NomosCustomer.objects.create(user=user, customer_id=seed.ALICE, email="alice@example.com")
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def trickling(slow: SlowBodies, rounds: int) -> None:
    """Wait until every slow connection has sent ``rounds`` bytes (and so has been waiting for
    at least ``rounds - 1`` intervals)."""
    end = time.monotonic() + 60  # a bound against hanging forever, not a threshold
    while slow.sent < rounds * slow.count:
        assert time.monotonic() < end, "the slow connections stopped sending"
        time.sleep(0.1)


# Fifty-six clicks as fast as they go: slow bodies behind nginx, not pacing.
@pytest.mark.sandbox_rate_limit(0)
def test_behind_nginx_ten_slow_bodies_do_not_delay_a_click(
    nginx_binary: str, server_env: dict[str, str], session_key: str, tmp_path: Path
) -> None:
    with slow_clients.gunicorn(server_env, workers=3, log=tmp_path / "gunicorn.log") as upstream:
        with slow_clients.nginx(tmp_path, upstream) as url:
            warm = click_times(url, session_key, 6)  # each worker has its token and connection
            assert {status for status, _ in warm} == {302}
            with SlowBodies(url, 10, interval=2.0) as slow:
                trickling(slow, 2)
                clicks = click_times(url, session_key, 50)
                sent = slow.sent
                trickling(slow, 3)
                assert slow.sent > sent  # still sending: nginx is holding all ten
    times = [seconds for _, seconds in clicks]
    assert [status for status, _ in clicks] == [302] * 50
    assert percentile(times, 0.99) < 1.0, sorted(times)[-5:]
    assert "WORKER TIMEOUT" not in (tmp_path / "gunicorn.log").read_text()


def test_without_nginx_ten_slow_bodies_hold_every_sync_worker(
    server_env: dict[str, str], session_key: str, tmp_path: Path
) -> None:
    """The problem the proxy solves is real: the same load straight at gunicorn."""
    with slow_clients.gunicorn(server_env, workers=3, log=tmp_path / "gunicorn.log") as upstream:
        url = f"http://{upstream}"
        warm = click_times(url, session_key, 3)
        assert {status for status, _ in warm} == {302}
        with SlowBodies(url, 10, interval=2.0) as slow:
            trickling(slow, 2)
            [(status, _)] = click_times(url, session_key, 1, timeout=3)
    assert status == 0  # no answer within 3 s: every worker is reading a slow body
