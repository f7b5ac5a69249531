"""The backlog part of ``bench/bench_load.py`` (issue 22): task workers draining a backlog of
webhook events under the site's Nomos budget (``API_RATE_LIMIT``), and portal clicks measured
beside it.

1. Clicks with no backlog: portal clicks at random (Poisson) moments, ``--click-rate`` a second,
   for ``--backlog-seconds``.
2. ``--backlog`` events (one per subscription, the costliest case: no fetch is shared) are
   recorded and queued; ``--backlog-workers`` workers start; once they run, the same clicks for
   the same time while the backlog drains. What the workers processed and what the sandbox saw
   in that time is the drain rate, printed next to the share of the budget webhook processing
   is given (``api_rate.sustained_rate("webhook")``).

The backlog is not drained to the end (10,000 events take about 25 minutes at 10 requests/s):
it stays a backlog for the whole measurement, which is what is measured. The table says how
long the rest would take at the rate measured.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

SUB_GET = "GET /subscriptions/{id}"
CLICK = "POST /admin/magic_link"


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (no interpolation: a p99 of 100 clicks is the 99th)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(share * len(ordered) + 0.5) - 1))]


def clicks(url: str, session_key: str, rate: float, seconds: float,
           seed: int) -> tuple[list[float], int, list[float]]:
    """Portal clicks at Poisson moments (an open loop: a slow click never delays the next):
    their times in ms, how many did not answer the 302, and the times of a bare
    login-required page asked for at the same moments (the machine's share of a slowdown:
    it calls no Nomos, so the rate limit never holds it back)."""
    import requests

    rng = random.Random(seed)
    moments, t = [], rng.expovariate(rate)
    while t < seconds:
        moments.append(t)
        t += rng.expovariate(rate)
    local = threading.local()
    times: list[float] = []
    bare: list[float] = []
    failures = [0]
    lock = threading.Lock()

    def timed(session: Any, path: str) -> tuple[float, int]:
        started = time.perf_counter()
        try:
            status = session.get(url + path, allow_redirects=False, timeout=30).status_code
        except requests.RequestException:
            status = 0
        return (time.perf_counter() - started) * 1000, status

    def click(path: str) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.cookies.set("sessionid", session_key)
        took, status = timed(session, path)
        with lock:
            if path == "/bare/":
                bare.append(took)
            else:
                times.append(took)
                failures[0] += status != 302

    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        for moment in moments:
            delay = start + moment - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(click, "/nomos/portal/")
            pool.submit(click, "/bare/")
    return times, failures[0], bare


def make_backlog(sandbox: Any, kind: str, size: int) -> None:
    """``size`` recorded events, one per new subscription, queued on ``kind`` as the webhook
    view queues them (``tasks.enqueue``)."""
    import secrets

    from django.db import transaction
    from django.test import override_settings

    from nomos_billing import tasks
    from nomos_billing.conf import raw_settings
    from nomos_billing.models import WebhookEvent

    customer = sandbox.add_customer(f"backlog-{secrets.token_hex(4)}@example.com")
    events = []
    for _ in range(size):
        sub = sandbox.add_subscription(customer["id"], status="active")["id"]
        event_id = "evt_" + secrets.token_hex(12)
        events.append(WebhookEvent(event_id=event_id, topic="subscription.updated", payload={
            "id": event_id, "topic": "subscription.updated",
            "created_at": "2026-11-25T12:00:00Z", "context": {"subscription": sub}}))
    WebhookEvent.objects.bulk_create(events, batch_size=2000)
    with override_settings(NOMOS_BILLING={**raw_settings(), "TASK_BACKEND": kind}):
        for start in range(0, size, 1000):
            with transaction.atomic():
                for event in events[start:start + 1000]:
                    tasks.enqueue(event.event_id)


def backlog(sandbox: Any, args: argparse.Namespace, env: dict[str, str],
            server: Callable[..., Any], workers: Callable[..., Any],
            backend_of: Callable[[str], str], table: Callable[..., None],
            wait_until: Callable[..., None]) -> None:
    import django_rq
    from django_tasks_db.models import DBTaskResult

    from nomos_billing import api_rate
    from nomos_billing.models import WebhookEvent

    limit = float(env["BENCH_API_RATE_LIMIT"])
    # The sandbox at Nomos' limit too: a 429 here would be a turn our limiter gave wrongly.
    sandbox.rate_limiter.set_limit(int(limit))
    share = api_rate.sustained_rate("webhook", limit)
    session_key = env["BENCH_SESSION"]
    seconds = args.backlog_seconds
    rows, figures = [], []
    for kind, count in [(k, n) for k in args.backlog_kinds for n in args.backlog_workers]:
        WebhookEvent.objects.all().delete()
        django_rq.get_queue("default").empty()
        DBTaskResult.objects.all().delete()
        web = server(args.workers, args.threads, "", env)
        try:
            # Without a backlog first, then with one: the two alternate from one pool size to
            # the next, so that load from elsewhere on the machine hits both alike.
            quiet, quiet_failed, quiet_bare = clicks(web.url, session_key, args.click_rate,
                                                     seconds, 1)
            make_backlog(sandbox, backend_of(kind), args.backlog)
            started = time.monotonic()
            pool = workers(kind, count, env, args.worker_nice)
            try:
                wait_until(lambda: WebhookEvent.objects.filter(status="processed").exists(),
                           120, f"the {kind} workers to start")
                startup = time.monotonic() - started
                time.sleep(2)  # every worker up, not just the first
                done = WebhookEvent.objects.filter(status="processed").count()
                before = dict(sandbox.calls)
                refused = sandbox.rate_limiter.refused
                window = time.monotonic()
                busy, busy_failed, busy_bare = clicks(web.url, session_key, args.click_rate,
                                                      seconds, 1)
                elapsed = time.monotonic() - window
                processed = WebhookEvent.objects.filter(status="processed").count() - done
                seen = {k: v - before.get(k, 0) for k, v in dict(sandbox.calls).items()}
                left = WebhookEvent.objects.exclude(status="processed").count()
                refused = sandbox.rate_limiter.refused - refused
            finally:
                pool.stop()
        finally:
            web.stop()
        fetches = seen.get(SUB_GET, 0) / elapsed
        # What webhook processing may take beside the clicks that came (api_rate keeps them
        # their room): the share the backlog is given on a site in use.
        clicked = seen.get(CLICK, 0) / elapsed
        room = api_rate.sustained_rate_beside_clicks("webhook", clicked, limit)
        calls = sum(v for k, v in seen.items() if not k.startswith("POST /oauth")) / elapsed
        name = f"{kind} x{count}" + (f" nice {args.worker_nice}" if args.worker_nice else "")
        figures.append((name, quiet, busy, quiet_failed, busy_failed,
                        quiet_bare, busy_bare))
        rows.append([name, f"{processed / elapsed:.2f}", f"{fetches:.2f}",
                     f"{clicked:.2f}", f"{room:.2f}",
                     f"{100 * fetches / room:.0f} %" if math.isfinite(room) else "-",
                     f"{calls:.2f}", f"{refused}", f"{startup:.1f}", f"{left}",
                     f"{left / max(processed / elapsed, 1e-9) / 60:.0f} min"])
    table(f"Backlog drain: {args.backlog} events (one per subscription) queued at once, "
          f"API_RATE_LIMIT {limit:g}/s (webhook share {share:.2f}/s), {seconds:.0f} s measured "
          "while it drains",
          ["workers", "events/s", "fetches/s", "clicks/s", "share left/s", "of it",
           "all calls/s at Nomos", "429s", "start s", "left", "rest takes"], rows)
    click_rows = []
    for name, quiet, busy, quiet_failed, busy_failed, quiet_bare, busy_bare in figures:
        for what, times, failed, bare in (("no backlog", quiet, quiet_failed, quiet_bare),
                                          (f"backlog, {name}", busy, busy_failed, busy_bare)):
            click_rows.append([what, len(times), failed, f"{statistics.median(times):.0f}",
                               f"{percentile(times, 0.95):.0f}", f"{percentile(times, 0.99):.0f}",
                               "-" if times is quiet else
                               f"{percentile(times, 0.99) / percentile(quiet, 0.99):.2f}x",
                               f"{statistics.median(bare):.0f}", f"{percentile(bare, 0.99):.0f}"])
    table(f"Portal clicks beside the backlog ({args.click_rate:g}/s at random moments, "
          f"{seconds:.0f} s each)",
          ["while", "clicks", "failed", "median ms", "p95 ms", "p99 ms", "p99 vs no backlog",
           "bare page median ms", "bare p99 ms"],
          click_rows)
