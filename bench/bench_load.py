"""Load on a real server: gunicorn + PostgreSQL + Redis + the sandbox with added latency, driven
by locust (headless). Prints, side by side:

1. portal clicks vs a bare login-required view on the same server;
2. webhook acknowledgement latency and throughput: inline vs the database task backend vs RQ
   (plus how fast the workers drain the queue), and duplicates of a processed event;
3. the catch-up of N subscriptions (time, API calls, queries per subscription, peak memory);
4. the health page and ``nomos_status`` data with 100k events and 20k customers.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/nomos_bench \\
    CACHE_URL=redis://127.0.0.1:6379/14 BENCH_RQ_URL=redis://127.0.0.1:6379/15 \\
    .venv/bin/python bench/bench_load.py [--latency 0.05] [--seconds 15] [--users 16]

The database is flushed at the start: never point it at data you keep. Needs the ``bench``
extra (gunicorn, locust) and PostgreSQL + Redis; says so and exits 2 when they are missing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

SEQUENTIAL = 200

DEFAULTS = {
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/nomos_bench",
    "CACHE_URL": "redis://127.0.0.1:6379/14",
    "BENCH_RQ_URL": "redis://127.0.0.1:6379/15",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise SystemExit(f"bench: timed out waiting for {what}")


class Server:
    """gunicorn with the bench site, for one TASK_BACKEND."""

    def __init__(self, workers: int, threads: int, task_backend: str, env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [str(BIN / "gunicorn"), "bench.load.wsgi:application", "-w", str(workers),
             "--threads", str(threads), "-b", f"127.0.0.1:{self.port}", "--log-level", "warning"],
            cwd=ROOT, env={**env, "BENCH_TASK_BACKEND": task_backend},
        )
        import requests

        def up() -> bool:
            try:
                return requests.get(self.url + "/bare/", allow_redirects=False,
                                    timeout=1).status_code == 302
            except requests.RequestException:
                return False

        wait_until(up, 30, "gunicorn")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


#: Worker kinds: the task backend each runs, and its command. ``rq`` forks a process per job
#: (RQ's default ``Worker``); ``rq-simple`` runs each job in the worker's own process.
WORKER_KINDS = {
    "db": ("db", ["db_worker", "--backend", "db", "--interval", "0.05", "--no-startup-delay"]),
    "rq": ("rq", ["rqworker", "default", "--job-class", "django_tasks_rq.Job"]),
    "rq-simple": ("rq", ["rqworker", "default", "--job-class", "django_tasks_rq.Job",
                         "--worker-class", "rq.worker.SimpleWorker"]),
}


def backend_of(kind: str) -> str:
    return WORKER_KINDS[kind][0]


class Workers:
    def __init__(self, kind: str, count: int, env: dict[str, str], nice: int = 0):
        backend, command = WORKER_KINDS[kind]
        worker_env = {**env, "BENCH_TASK_BACKEND": backend}
        # A niced worker leaves the CPU to the web server whenever both want it: the backlog
        # still drains at the budget (it waits on Nomos' turns, not on the CPU).
        self.processes = [
            subprocess.Popen([sys.executable, "-m", "django", *command], cwd=ROOT,
                             env=worker_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             preexec_fn=(lambda: os.nice(nice)) if nice else None)
            for _ in range(count)
        ]

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def locust(url: str, scenario: str, args: argparse.Namespace, env: dict[str, str],
           users: int | None = None, seconds: int | None = None,
           **extra: str) -> dict[str, float]:
    users = users or args.users
    seconds = seconds or args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "run")
        subprocess.run(
            [str(BIN / "locust"), "-f", str(ROOT / "bench/load/locustfile.py"), "--headless",
             "-u", str(users), "-r", str(users), "-t", f"{seconds}s",
             "-H", url, "--csv", prefix, "--only-summary", "--stop-timeout", "5",
             "--loglevel", "WARNING"],
            cwd=ROOT, env={**env, "BENCH_SCENARIO": scenario, **extra}, check=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        with open(prefix + "_stats.csv") as f:
            row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    return {
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "median": float(row["Median Response Time"]),
        "p95": float(row["95%"]),
        "rps": float(row["Requests/s"]),
    }


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.05, help="sandbox seconds per call")
    parser.add_argument("--seconds", type=int, default=15, help="load per scenario")
    parser.add_argument("--users", type=int, default=16, help="concurrent locust users")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument("--task-workers", type=int, default=2, help="db_worker / rqworker count")
    parser.add_argument("--subscriptions", type=int, default=10_000, help="catch-up size")
    parser.add_argument("--events", type=int, default=100_000, help="health page: events")
    parser.add_argument("--customers", type=int, default=20_000, help="health page: customers")
    parser.add_argument("--backlog", type=int, default=10_000, help="backlog: events queued")
    parser.add_argument("--backlog-seconds", type=float, default=180,
                        help="backlog: seconds of clicks without and with the backlog draining")
    parser.add_argument("--backlog-workers", type=int, nargs="+", default=[2],
                        help="backlog: worker processes (each number a run)")
    parser.add_argument("--backlog-kinds", nargs="+", choices=sorted(WORKER_KINDS),
                        default=["db", "rq-simple"],
                        help="backlog: workers to drain with (rq forks per job, rq-simple not)")
    parser.add_argument("--worker-nice", type=int, default=0,
                        help="backlog: niceness of the task workers (10: the web server first)")
    parser.add_argument("--click-rate", type=float, default=1.0,
                        help="backlog: portal clicks per second (at random moments)")
    parser.add_argument("--api-rate-limit", type=float, default=10,
                        help="backlog: API_RATE_LIMIT of the site (the other parts run without)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run for CI: every part smaller and shorter")
    parser.add_argument("--only", choices=["load", "catchup", "health", "backlog"],
                        action="append", help="run only these parts (repeatable); default all")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.subscriptions = min(args.seconds, 5), min(args.subscriptions, 2000)
        args.events, args.customers = min(args.events, 20_000), min(args.customers, 4000)
        args.backlog_seconds, args.backlog_kinds = min(args.backlog_seconds, 45), ["db"]

    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        import gunicorn  # noqa: F401
        import locust as _locust  # noqa: F401
    except ImportError:
        print("bench: install the bench extra first: pip install -e '.[bench]'", file=sys.stderr)
        raise SystemExit(2) from None

    from nomos_billing.sandbox import Fault, Sandbox, SandboxServer, seed

    # Our own code's speed: Nomos' rate limit off in the sandbox (--rate-limit 0).
    sandbox = Sandbox("sandbox-client", "sandbox-secret", rate_limit=0)
    server = SandboxServer(sandbox, "127.0.0.1", 0).start()
    os.environ["BENCH_API_BASE_URL"] = server.url
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.load.settings"
    os.environ["PYTHONPATH"] = str(ROOT)
    env = dict(os.environ)

    import django

    django.setup()
    from django.core.cache import cache
    from django.core.management import call_command
    from django.db import connection

    try:
        connection.ensure_connection()
        cache.set("nomos-bench-ping", 1)
    except Exception as exc:
        print(f"bench: needs PostgreSQL and Redis ({exc})", file=sys.stderr)
        raise SystemExit(2) from None
    call_command("migrate", verbosity=0, interactive=False)
    call_command("flush", verbosity=0, interactive=False)
    cache.clear()
    import django_rq

    django_rq.get_queue("default").empty()

    from django.contrib.auth import get_user_model
    from django.contrib.sessions.backends.cache import SessionStore

    from nomos_billing.models import NomosCustomer

    user = get_user_model().objects.create_user("alice", password="x")
    NomosCustomer.objects.create(customer_id=seed.ALICE, user=user, email="alice@example.com")
    session = SessionStore()
    session["_auth_user_id"] = str(user.pk)
    session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
    session["_auth_user_hash"] = user.get_session_auth_hash()
    session.create()
    env["BENCH_SESSION"] = session.session_key

    customer = sandbox.add_customer("load@example.com")
    subs = [sandbox.add_subscription(customer["id"], status="active")["id"] for _ in range(2000)]
    subs_file = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
    subs_file.write("\n".join(subs))
    subs_file.close()
    env["BENCH_SUBSCRIPTIONS"] = subs_file.name
    sandbox.add_fault("*", Fault(latency=args.latency), times=None)

    print(f"== nomos-billing load benchmark: {machine()}")
    print(f"   gunicorn {args.workers} workers x {args.threads} threads, {args.users} locust "
          f"users, {args.seconds} s per scenario, sandbox latency {args.latency * 1000:.0f} ms "
          f"per call, {args.task_workers} task workers")

    parts = set(args.only or ["load", "catchup", "health", "backlog"])
    if "load" in parts:
        load(sandbox, subs, args, env)
    if "catchup" in parts:
        catch_up(sandbox, args, env)
    if "health" in parts:
        health_page(args)
    if "backlog" in parts:
        from bench.load.backlog import backlog

        backlog(sandbox, args, {**env, "BENCH_API_RATE_LIMIT": f"{args.api_rate_limit:g}"},
                Server, Workers, backend_of, table, wait_until)
    server.stop()
    os.unlink(subs_file.name)


def load(sandbox: Any, subs: list[str], args: argparse.Namespace, env: dict[str, str]) -> None:
    from nomos_billing.models import WebhookEvent

    # 1. clicks, and 2. inline webhooks + duplicates, on one inline server.
    web = Server(args.workers, args.threads, "", env)
    try:
        clicks = {name: locust(web.url, name, args, env) for name in ("bare", "portal")}
        light = {"inline": sequential(web.url, subs)}
        WebhookEvent.objects.all().delete()
        before = sandbox.count("GET /subscriptions/{id}")
        webhooks = {"inline": locust(web.url, "webhook", args, env)}
        processed = {"inline": webhooks["inline"]["rps"]}
        fetches = {"inline": sandbox.count("GET /subscriptions/{id}") - before}
        events = {"inline": WebhookEvent.objects.count()}
        duplicate = json.dumps({"id": "evt_bench_duplicate", "topic": "subscription.updated",
                                "created_at": "2026-11-25T12:00:00Z",
                                "context": {"subscription": subs[0]}})
        locust_one(web.url, duplicate)
        dup = locust(web.url, "duplicate", args, env, BENCH_DUPLICATE_EVENT=duplicate)
    finally:
        web.stop()

    for kind in ("db", "rq"):
        WebhookEvent.objects.all().delete()
        before = sandbox.count("GET /subscriptions/{id}")
        web = Server(args.workers, args.threads, kind, env)
        # The acknowledgement alone: workers start after it (in production they run on other
        # machines; here they would share the two cores with the web server).
        light[kind] = sequential(web.url, subs)
        workers = Workers(kind, args.task_workers, env)
        try:
            wait_until(lambda: not WebhookEvent.objects.exclude(status="processed").exists(),
                       600, f"the {kind} workers to drain the queue")
            WebhookEvent.objects.all().delete()
            before = sandbox.count("GET /subscriptions/{id}")
            started = time.monotonic()
            webhooks[kind] = locust(web.url, "webhook", args, env)
            wait_until(lambda: not WebhookEvent.objects.exclude(status="processed").exists(),
                       600, f"the {kind} workers to drain the queue")
            elapsed = time.monotonic() - started
            events[kind] = WebhookEvent.objects.count()
            processed[kind] = events[kind] / elapsed
            fetches[kind] = sandbox.count("GET /subscriptions/{id}") - before
        finally:
            workers.stop()
            web.stop()

    table("Clicks (same gunicorn, logged-in user)",
          ["view", "requests", "failed", "median ms", "p95 ms", "req/s"],
          [[name, r["requests"], r["failures"], r["median"], r["p95"], f"{r['rps']:.1f}"]
           for name, r in (("bare login_required view", clicks["bare"]),
                           ("portal click (mints a link)", clicks["portal"]))])
    inline_light = light["inline"]["median"] or 1
    table(f"Webhook acknowledgement, one sender, {SEQUENTIAL} deliveries one after another "
          "(task workers not yet started)",
          ["mode", "acks", "failed", "median ms", "p95 ms", "median vs inline"],
          [[mode, r["requests"], r["failures"], r["median"], r["p95"],
            f"{inline_light / (r['median'] or 1):.1f}x faster" if mode != "inline" else "-"]
           for mode, r in light.items()])
    inline_median = webhooks["inline"]["median"] or 1
    table(f"Webhooks under load ({args.users} senders): acknowledgement and processing",
          ["mode", "acks", "failed", "median ms", "p95 ms", "acks/s", "processed/s",
           "fetches/event", "median vs inline"],
          [[mode, r["requests"], r["failures"], r["median"], r["p95"], f"{r['rps']:.1f}",
            f"{processed[mode]:.1f}", f"{fetches[mode] / max(events[mode], 1):.2f}",
            f"{inline_median / (r['median'] or 1):.1f}x faster" if mode != "inline" else "-"]
           for mode, r in webhooks.items()]
          + [["duplicate of a processed event", dup["requests"], dup["failures"], dup["median"],
              dup["p95"], f"{dup['rps']:.1f}", "-", "-", "-"]])


def sequential(url: str, subs: list[str]) -> dict[str, float]:
    """Deliveries one after another over one keep-alive connection, as a sender that waits for
    each answer: the acknowledgement time without load-generator contention."""
    import hashlib
    import hmac
    import secrets

    import requests

    times, failures = [], 0
    with requests.Session() as session:
        for n in range(SEQUENTIAL):
            body = json.dumps({"id": "evt_" + secrets.token_hex(12),
                               "topic": "subscription.updated",
                               "created_at": "2026-11-25T12:00:00Z",
                               "context": {"subscription": subs[n % len(subs)]}}).encode()
            t = int(time.time())
            v1 = hmac.new(b"whsec_bench", f"{t}.".encode() + body, hashlib.sha256).hexdigest()
            started = time.perf_counter()
            response = session.post(url + "/nomos/webhook/", data=body, timeout=30, headers={
                "X-Nomos-Signature": f"t={t},v1={v1}", "Content-Type": "application/json"})
            times.append((time.perf_counter() - started) * 1000)
            failures += response.status_code not in (200, 202)
    times.sort()
    return {"requests": len(times), "failures": failures,
            "median": round(statistics.median(times), 1),
            "p95": round(times[int(len(times) * 0.95) - 1], 1), "rps": 0.0}


def locust_one(url: str, event_json: str) -> None:
    """Deliver one event and let it be processed (inline server)."""
    import hashlib
    import hmac

    import requests

    body = event_json.encode()
    t = int(time.time())
    v1 = hmac.new(b"whsec_bench", f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    response = requests.post(url + "/nomos/webhook/", data=body, timeout=30,
                             headers={"X-Nomos-Signature": f"t={t},v1={v1}",
                                      "Content-Type": "application/json"})
    assert response.status_code == 200, response.text


def catch_up(sandbox: Any, args: argparse.Namespace, env: dict[str, str]) -> None:
    from nomos_billing.models import NomosSubscription, NomosSyncState

    NomosSyncState.objects.all().delete()
    NomosSubscription.objects.all().delete()
    with sandbox.lock:  # the webhook scenarios' subscriptions: a walk of N, not N + 2000
        for sub_id in [s for s in sandbox.subscriptions if s.startswith("sub_")
                       and not s.startswith("sub_sandbox")]:
            del sandbox.subscriptions[sub_id]
    old = (datetime.now(dt_timezone.utc) - timedelta(hours=2)).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z")
    per_customer = 10
    for n in range(args.subscriptions // per_customer):
        customer = sandbox.add_customer(f"catchup{n}@example.com")
        for _ in range(per_customer):
            sandbox.add_subscription(customer["id"], created_at=old)
    sandbox.reset_counts()
    process = subprocess.Popen([sys.executable, str(ROOT / "bench/load/catchup_child.py")],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"bench: catch-up failed: {out}")
    result = json.loads(out.strip().splitlines()[-1])
    stored = NomosSubscription.objects.count()
    calls = {k: v for k, v in sandbox.calls.items() if not k.startswith("POST /oauth")}
    api_calls = sum(calls.values())
    table(f"Catch-up: nomos_sync --since auto, first walk of {args.subscriptions} subscriptions "
          f"({per_customer} per customer)",
          ["subscriptions stored", "seconds", "API calls", "of which", "queries/subscription",
           "peak RSS MiB"],
          [[stored, f"{result['seconds']:.1f}", api_calls,
            ", ".join(f"{k} {v}" for k, v in sorted(calls.items())),
            f"{result['queries'] / max(stored, 1):.1f}", f"{usage.ru_maxrss / 1024:.0f}"]])


def health_page(args: argparse.Namespace) -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from nomos_billing import health
    from nomos_billing.models import NomosCustomer, WebhookEvent

    WebhookEvent.objects.all().delete()
    statuses = ["processed"] * 98 + ["failed", "processing"]
    WebhookEvent.objects.bulk_create(
        [WebhookEvent(event_id=f"evt_h{n}", topic="subscription.updated",
                      status=statuses[n % 100]) for n in range(args.events)], batch_size=5000)
    existing = NomosCustomer.objects.count()
    NomosCustomer.objects.bulk_create(
        [NomosCustomer(customer_id=f"cus_h{n}") for n in range(args.customers - existing)],
        batch_size=5000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    get_user_model().objects.filter(username="benchadmin").delete()
    admin = get_user_model().objects.create_superuser("benchadmin", password="x")
    client = Client()
    client.force_login(admin)
    url = "/admin/nomos_billing/webhookevent/health/"
    client.get(url)
    page, data = [], []
    for _ in range(7):
        started = time.perf_counter()
        assert client.get(url).status_code == 200
        page.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        health.collect()
        data.append((time.perf_counter() - started) * 1000)
    with CaptureQueriesContext(connection) as captured:
        health.collect()
    table(f"Health view with {args.events} events and {args.customers} customers",
          ["what", "median ms", "max ms", "queries"],
          [["admin page (render included)", f"{statistics.median(page):.1f}",
            f"{max(page):.1f}", "-"],
           ["health.collect() / nomos_status data", f"{statistics.median(data):.1f}",
            f"{max(data):.1f}", len(captured.captured_queries)]])


def machine() -> str:
    import django

    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from django.db import connection

    server = connection.cursor().connection.info.server_version
    return (f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, Django "
            f"{django.get_version()}, PostgreSQL {server // 10000}.{server % 10000}")


if __name__ == "__main__":
    main()
