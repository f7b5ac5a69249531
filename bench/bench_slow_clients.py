"""A logged-in click while slow clients hold connections: gunicorn's sync workers alone, and
behind nginx (deploy/nginx.conf, deploy/gunicorn.conf.py).

gunicorn with 3 sync workers (the suite's settings, on the database and cache of DATABASE_URL /
CACHE_URL), the sandbox on a loopback port, Debian's nginx in front (a configuration generated
from deploy/nginx.conf in a temporary directory). ``--slow`` connections POST a webhook body
1 byte every 2 s while one client clicks the portal button, one click after another; the table
gives the median, p99 and slowest click, and how many got no answer within ``--timeout``.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/nb_bench \\
    CACHE_URL=redis://127.0.0.1:6379/9 .venv/bin/python bench/bench_slow_clients.py

The database is migrated and gets one user. Prints figures; asserts nothing about them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.slow_clients import (  # noqa: E402 - after the path is set
    SlowBodies,
    click_times,
    gunicorn,
    latencies,
    nginx,
    nginx_binary,
)

CLIENT_ID, CLIENT_SECRET = "sandbox-client", "sandbox-secret"
SETUP = """
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from nomos_billing.models import NomosCustomer
from nomos_billing.sandbox import seed
User = get_user_model()
user, _ = User.objects.get_or_create(username="bench-alice")
NomosCustomer.objects.get_or_create(customer_id=seed.ALICE, defaults={"user": user})
session = SessionStore()
session["_auth_user_id"] = str(user.pk)
session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
session["_auth_user_hash"] = user.get_session_auth_hash()
session.create()
print(session.session_key)
"""


def django_env(sandbox_url: str) -> dict[str, str]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.server_settings",
           "PYTHONPATH": str(ROOT), "NOMOS_TEST_API_BASE_URL": sandbox_url,
           # One user clicks in a loop: the benchmark measures the click, not the limit.
           "NOMOS_TEST_SETTINGS": json.dumps({"RATE_LIMITS": {"portal": None}})}
    env.pop("PYTHONDEVMODE", None)
    return env


def measure(url: str, session_key: str, clicks: int, slow: int, timeout: float) -> list[Any]:
    click_times(url, session_key, 6)  # every worker has its token and connection
    if not slow:
        return click_times(url, session_key, clicks, timeout=timeout)
    with SlowBodies(url, slow, interval=2.0) as bodies:
        end = time.monotonic() + 60
        while bodies.sent < 2 * slow and time.monotonic() < end:
            time.sleep(0.1)
        return click_times(url, session_key, clicks, timeout=timeout)


def row(label: str, results: list[tuple[int, float]], timeout: float) -> str:
    times = [seconds for _, seconds in results]
    answered = sorted({status for status, _ in results if status})
    lost = sum(1 for status, _ in results if not status)
    return (f"  {label:<38} n={len(results):<4} statuses={answered!s:<8} {latencies(times)}  "
            f"no answer in {timeout:g} s: {lost}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=10, help="connections sending 1 byte / 2 s")
    parser.add_argument("--clicks", type=int, default=200, help="clicks per row")
    parser.add_argument("--direct-clicks", type=int, default=3,
                        help="clicks straight at gunicorn under slow clients (each can take 30 s+)")
    parser.add_argument("--timeout", type=float, default=90.0, help="a click's client timeout")
    args = parser.parse_args()
    if nginx_binary() is None:
        sys.exit("nginx is not installed: apt-get install nginx-light")
    if not os.environ.get("DATABASE_URL"):
        sys.exit("Set DATABASE_URL (PostgreSQL) and CACHE_URL (Redis): the workers share both.")
    from nomos_billing.sandbox import Sandbox, SandboxServer

    # Our own code's speed: Nomos' rate limit off in the sandbox (--rate-limit 0).
    sandbox = Sandbox(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, rate_limit=0)
    rows = []
    with SandboxServer(sandbox, host="127.0.0.1", port=0), \
            tempfile.TemporaryDirectory() as tmp:
        env = django_env(sandbox.base_url)
        subprocess.run([sys.executable, "-m", "django", "migrate", "-v0"], cwd=ROOT, env=env,
                       check=True)
        key = subprocess.run(
            [sys.executable, "-m", "django", "shell", "-c", SETUP], cwd=ROOT, env=env,
            check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        with gunicorn(env, workers=3) as upstream:
            direct = f"http://{upstream}"
            rows.append(row("gunicorn alone, no slow clients",
                            measure(direct, key, args.clicks, 0, args.timeout), args.timeout))
            with nginx(Path(tmp), upstream) as proxied:
                rows.append(row("nginx + gunicorn, no slow clients",
                                measure(proxied, key, args.clicks, 0, args.timeout),
                                args.timeout))
                rows.append(row(f"nginx + gunicorn, {args.slow} slow clients",
                                measure(proxied, key, args.clicks, args.slow, args.timeout),
                                args.timeout))
            rows.append(row(f"gunicorn alone, {args.slow} slow clients",
                            measure(direct, key, args.direct_clicks, args.slow, args.timeout),
                            args.timeout))
    print("\nA logged-in portal click (302); gunicorn 3 sync workers (deploy/gunicorn.conf.py); "
          "slow clients send a webhook body 1 byte every 2 s\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
