"""Webhook receiving: deliveries per second, and what a duplicate delivery costs.

Signed deliveries go through Django's test client (the full middleware stack and the real view,
no network), on SQLite in memory unless DATABASE_URL is set:

- ``test.event``: verify, store, dedupe (no Nomos call);
- ``subscription.created``: the same plus ``GET /subscriptions/{id}`` from a live sandbox and
  the upsert;
- a duplicate of an already processed event: latency and database queries.

    .venv/bin/python bench/bench_webhooks.py [N]
"""

from __future__ import annotations

import statistics
import sys
import time

from _setup import CLIENT_ID, CLIENT_SECRET, environment, setup_django

from nomos_billing.sandbox import Sandbox, SandboxServer, seed


def main(n: int = 300) -> None:
    # Our own code's speed: Nomos' rate limit off in the sandbox (--rate-limit 0).
    sandbox = Sandbox(CLIENT_ID, CLIENT_SECRET, rate_limit=0)
    with SandboxServer(sandbox) as server:
        setup_django(server.url)
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext, setup_test_environment

        from nomos_billing.models import WebhookEvent
        from nomos_billing.testing import make_event, post_event

        setup_test_environment()
        client = Client()
        print(f"bench_webhooks: {environment()}, {n} deliveries per row")

        for topic, context in (("test.event", {}),
                               ("subscription.created", {"subscription": seed.ALICE_SUBSCRIPTION})):
            events = [make_event(topic, context) for _ in range(n)]
            sandbox.reset_counts()
            start = time.perf_counter()
            for event in events:
                response = post_event(client, event)
                assert response.status_code == 200, response.content
            elapsed = time.perf_counter() - start
            fetches = sandbox.count("GET /subscriptions/{id}")
            print(f"  {topic:<22} {n / elapsed:8.0f} deliveries/s  {elapsed * 1000 / n:6.2f} "
                  f"ms each  (sandbox fetches: {fetches})")

        original = make_event("subscription.created", {"subscription": seed.ALICE_SUBSCRIPTION})
        assert post_event(client, original).status_code == 200
        sandbox.reset_counts()
        latencies, queries = [], []
        for _ in range(n):
            with CaptureQueriesContext(connection) as captured:
                start = time.perf_counter()
                response = post_event(client, original)
                latencies.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200
            queries.append(len(captured.captured_queries))
        event = WebhookEvent.objects.get(event_id=original["id"])
        print(f"  duplicate delivery      median {statistics.median(latencies):.2f} ms, "
              f"p95 {sorted(latencies)[int(n * 0.95) - 1]:.2f} ms, "
              f"{max(queries)} queries (min {min(queries)}), sandbox fetches "
              f"{sandbox.count('GET /subscriptions/{id}')}, deliveries counted "
              f"{event.deliveries}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
