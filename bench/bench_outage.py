"""How fast do users and Nomos get their 503 while Nomos is down? Before and after the breaker.

gunicorn with 3 sync workers (the suite's settings, PostgreSQL + Redis), the sandbox on a
loopback port. For each mode (breaker off: ``BREAKER_FAILURES = 0``; breaker on: the defaults)
the sandbox hangs every API call for a 20 s window while some threads click the portal button
and others deliver webhooks (``--clickers``, ``--deliverers``); the table gives the median and
p99 time of the answers (all 503), the slowest, how many took over a second (the calls in
flight when the outage began wait out their timeouts, cut to the request's budget, before the
breaker can open), and how many calls reached the hanging Nomos.

The goal (issue 9): with the breaker, a click's 503 page in under 50 ms at the median and under
the click budget (5 s) at p99. The default load (3 clicking threads and 1 delivering, closed
loop) keeps the 3 workers busy without queueing; with more threads than workers the figures
measure the queue in front of gunicorn, not the answer (try ``--clickers 8``).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/nb_bench \\
    CACHE_URL=redis://127.0.0.1:6379/9 .venv/bin/python bench/bench_outage.py [--window 20]

Prints figures; asserts nothing about them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.slow_clients import latencies  # noqa: E402 - after the path is set

CLIENT_ID, CLIENT_SECRET = "sandbox-client", "sandbox-secret"
WEBHOOK_SECRET = "whsec_test_new"  # tests/settings.py's newest secret
SETUP = """
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from nomos_billing.models import NomosCustomer, WebhookEvent
from nomos_billing.sandbox import seed
User = get_user_model()
user, _ = User.objects.get_or_create(username="bench-alice")
NomosCustomer.objects.get_or_create(customer_id=seed.ALICE, defaults={"user": user})
WebhookEvent.objects.all().delete()
session = SessionStore()
session["_auth_user_id"] = str(user.pk)
session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
session["_auth_user_hash"] = user.get_session_auth_hash()
session.create()
print(session.session_key)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def django_env(sandbox_url: str, settings: dict[str, Any]) -> dict[str, str]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.server_settings",
           "PYTHONPATH": str(ROOT), "NOMOS_TEST_API_BASE_URL": sandbox_url,
           "NOMOS_TEST_SETTINGS": json.dumps(settings)}
    env.pop("PYTHONDEVMODE", None)
    return env


def run_mode(name: str, sandbox: Any, settings: dict[str, Any], args: argparse.Namespace,
             session_key: str) -> dict[str, Any]:
    import requests

    from nomos_billing.sandbox import Fault
    from nomos_billing.testing import make_event, sign_payload

    env = django_env(sandbox.base_url, settings)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "tests.wsgi:application", "--bind",
         f"127.0.0.1:{port}", "--workers", "3", "--timeout", "30", "--log-level", "error"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    cookies = {"sessionid": session_key}
    try:
        for _ in range(300):
            try:
                requests.get(url + "/nomos/portal/", cookies=cookies, allow_redirects=False,
                             timeout=10)
                break
            except requests.RequestException:
                time.sleep(0.1)
        for _ in range(6):  # every worker has its client, token and connections
            requests.get(url + "/nomos/portal/", cookies=cookies, allow_redirects=False,
                         timeout=30)
        sandbox.reset_counts()
        for key in ("POST /admin/magic_link", "GET /subscriptions/{id}", "POST /oauth/token"):
            sandbox.add_fault(key, Fault(hang=60), times=None)
        clicks: list[tuple[int, float]] = []
        hooks: list[tuple[int, float]] = []
        end = time.monotonic() + args.window

        def clicker() -> None:
            with requests.Session() as http:
                while time.monotonic() < end:
                    start = time.perf_counter()
                    status = http.get(url + "/nomos/portal/", cookies=cookies,
                                      allow_redirects=False, timeout=60).status_code
                    clicks.append((status, time.perf_counter() - start))

        def deliverer() -> None:
            with requests.Session() as http:
                while time.monotonic() < end:
                    event = make_event("subscription.updated",
                                       {"subscription": "sub_sandbox_alice"})
                    body = json.dumps(event).encode()
                    headers = {"Content-Type": "application/json",
                               "X-Nomos-Signature": sign_payload(body, WEBHOOK_SECRET)}
                    start = time.perf_counter()
                    status = http.post(url + "/nomos/webhook/", data=body, headers=headers,
                                       timeout=60).status_code
                    hooks.append((status, time.perf_counter() - start))

        threads = [threading.Thread(target=clicker) for _ in range(args.clickers)]
        threads += [threading.Thread(target=deliverer) for _ in range(args.deliverers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        calls = sum(sandbox.count(k) for k in ("POST /admin/magic_link",
                                                "GET /subscriptions/{id}", "POST /oauth/token"))
        sandbox.clear_faults()
    finally:
        server.terminate()
        server.wait(30)
    return {"name": name, "clicks": clicks, "hooks": hooks, "calls": calls}


def row(label: str, answers: list[tuple[int, float]]) -> str:
    if not answers:
        return f"  {label:<9} (none)"
    times = [t for _, t in answers]
    statuses = sorted({s for s, _ in answers})
    return (f"  {label:<9} n={len(answers):<5} statuses={statuses!s:<12} {latencies(times)}  "
            f"over 1 s: {sum(t > 1 for t in times)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=20.0, help="outage seconds per mode")
    parser.add_argument("--clickers", type=int, default=3, help="threads clicking the button")
    parser.add_argument("--deliverers", type=int, default=1, help="threads posting webhooks")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit("Set DATABASE_URL to a PostgreSQL database and CACHE_URL to Redis: the "
                 "gunicorn workers share both.")
    from nomos_billing.sandbox import Sandbox, SandboxServer

    # Our own code's speed: Nomos' rate limit off in the sandbox (--rate-limit 0).
    sandbox = Sandbox(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, rate_limit=0)
    with SandboxServer(sandbox, host="127.0.0.1", port=0):
        env = django_env(sandbox.base_url, {})
        subprocess.run([sys.executable, "-m", "django", "migrate", "-v0"], cwd=ROOT, env=env,
                       check=True)
        session_key = subprocess.run(
            [sys.executable, "-m", "django", "shell", "-c", SETUP], cwd=ROOT, env=env,
            check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        # One user clicks for the whole window: counted by RATE_LIMITS, never refused.
        production = {"TIMEOUT": [3.05, 10], "MAX_RETRY_WAIT": 5, "MAX_RETRIES": 3,
                      "RATE_LIMITS": {"portal": [100_000, 60]}}
        results = [
            run_mode("breaker off", sandbox, {**production, "BREAKER_FAILURES": 0},
                     args, session_key),
            run_mode("breaker on", sandbox, {**production, "BREAKER_FAILURES": 5,
                                             "BREAKER_COOLDOWN": 10}, args, session_key),
        ]
    print(f"\nNomos hangs for {args.window:g} s; gunicorn 3 sync workers; {args.clickers} "
          f"clicking and {args.deliverers} delivering threads; CLICK_BUDGET 5 s, "
          "WEBHOOK_BUDGET 20 s\n")
    for result in results:
        print(f"{result['name']}: {result['calls']} calls reached the hanging Nomos")
        print(row("clicks", result["clicks"]))
        print(row("webhooks", result["hooks"]))


if __name__ == "__main__":
    main()
