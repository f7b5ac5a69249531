"""The admin and the health page at scale (issue 22): every page at 1,000,000 events and 200,000
customers next to the same page at 1,000 events and 200 customers, as a ratio, with the number
of queries of each. PostgreSQL only (the rows are made with ``generate_series``; SQLite is not
where a site keeps a million events).

Events are spread over the 30 days of ``EVENT_RETENTION_DAYS`` (about 33,000 a day at the large
size), a fifth failed, 150 stuck (at both sizes:
pages of equal rows); customers mostly active, none linked (the unlinked
filter at its widest).

    DATABASE_URL=postgres://.../nomos_h_h_bench .venv/bin/python bench/bench_admin.py [--quick]

The database named by DATABASE_URL is FLUSHED: give it one of its own. ``--quick``: 100,000
events and 20,000 customers.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

from _setup import environment, setup_django

QUICK = "--quick" in sys.argv
ROUNDS = 3 if QUICK else 7
SMALL = (200, 1_000)
LARGE = (20_000, 100_000) if QUICK else (200_000, 1_000_000)

CUSTOMERS = "/admin/nomos_billing/nomoscustomer/"
SUBSCRIPTIONS = "/admin/nomos_billing/nomossubscription/"
EVENTS = "/admin/nomos_billing/webhookevent/"
PAGES: list[tuple[str, str, dict[str, str]]] = [
    ("customers", CUSTOMERS, {}),
    ("customers, page 2", CUSTOMERS, {"p": "2"}),
    ("customer search", CUSTOMERS, {"q": "cus_b_7"}),
    ("customers by latest status", CUSTOMERS, {"status": "active"}),
    ("unlinked customers", CUSTOMERS, {"linked": "no"}),
    ("subscriptions", SUBSCRIPTIONS, {}),
    ("subscriptions by status", SUBSCRIPTIONS, {"status__exact": "active"}),
    ("subscription search", SUBSCRIPTIONS, {"q": "sub_b_7"}),
    ("events", EVENTS, {}),
    ("events, page 5", EVENTS, {"p": "5"}),
    ("event search", EVENTS, {"q": "evt_b_7"}),
    ("failed events", EVENTS, {"status__exact": "failed"}),
    ("stuck events", EVENTS, {"stuck": "yes"}),
    ("events by topic", EVENTS, {"topic": "invoice.paid"}),
    ("health page", EVENTS + "health/", {}),
]


def row(goal: str, figure: str, baseline: str, ratio: float, target: str) -> None:
    print(f"  {goal:<60} {figure:>12} {baseline:>12} {ratio:6.2f}x   goal {target}")


def counted(fn: Any) -> tuple[Any, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as capture:
        result = fn()
    control = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")
    return result, sum(1 for q in capture.captured_queries
                       if not q["sql"].upper().startswith(control))


def grow(customers: int, events: int) -> None:
    """Add rows up to the given totals, in SQL (a million rows in about a minute)."""
    from django.db import connection

    from nomos_billing.models import NomosCustomer, WebhookEvent

    have_c, have_e = NomosCustomer.objects.count(), WebhookEvent.objects.count()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO nomos_billing_nomoscustomer
              (customer_id, email, first_name, last_name, company_name, type, linked_by,
               latest_status, created_at, updated_at)
            SELECT 'cus_b_' || i, 'b' || i || '@example.com', '', '', '', 'person', '',
                   (ARRAY['active','active','active','active','active','active','active',
                          'active','pending','ended'])[mod(i, 10) + 1],
                   now() - make_interval(secs => i), now()
            FROM generate_series(%s, %s) AS i
            """,
            [have_c, customers - 1],
        )
        cursor.execute(
            """
            INSERT INTO nomos_billing_nomossubscription
              (customer_id, subscription_id, status, plan, type, number, metadata, lead_id,
               nomos_created_at, created_at, updated_at)
            SELECT c.id, 'sub_b_' || substr(c.customer_id, 7), c.latest_status, 'pln_b',
                   'consumption', '', '{}'::jsonb, '', c.created_at, c.created_at, now()
            FROM nomos_billing_nomoscustomer c
            WHERE c.customer_id LIKE 'cus_b_%%' AND c.id > (
              SELECT coalesce(max(customer_id), 0) FROM nomos_billing_nomossubscription)
            """
        )
        # Spread over the retention period, newest first; a fifth failed, a few stuck.
        cursor.execute(
            """
            INSERT INTO nomos_billing_webhookevent
              (event_id, topic, payload, status, attempts, last_error, deliveries,
               received_at, claimed_at, processed_at, updated_at)
            SELECT 'evt_b_' || i,
                   (ARRAY['subscription.created', 'invoice.paid',
                          'meter_order.placed'])[mod(i, 3) + 1],
                   jsonb_build_object('id', 'evt_b_' || i),
                   CASE WHEN i < 150 THEN 'processing'
                        ELSE (ARRAY['processed','processed','processed','failed',
                                    'ignored'])[mod(i, 5) + 1] END,
                   1, CASE WHEN mod(i, 5) = 3 THEN 'NomosUnavailable: Nomos is down' ELSE '' END, 1,
                   now() - make_interval(secs => (%s - i) * 2592000.0 / %s),
                   CASE WHEN i < 150 THEN now() - interval '1 hour' END,
                   now(), now()
            FROM generate_series(%s, %s) AS i
            """,
            [events, events, have_e, events - 1],
        )
        cursor.execute("ANALYZE")


def main() -> None:
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit("bench_admin.py needs DATABASE_URL=postgres://... (a database of its own)")
    setup_django()
    from django.test.utils import setup_test_environment

    setup_test_environment()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    call_command("flush", interactive=False, verbosity=0)
    admin = get_user_model().objects.create_superuser("benchadmin", "a@example.com", "pw")
    client = Client()
    client.force_login(admin)

    def measure() -> list[tuple[float, int, int]]:
        out = []
        for _, url, query in PAGES:
            times, queries, rows = [], 0, 0
            for _ in range(ROUNDS):
                response, queries = counted(lambda url=url, query=query: client.get(url, query))
                assert response.status_code == 200, (url, response.status_code)
                cl = response.context.get("cl")
                rows = len(cl.result_list) if cl is not None else 0
                start = time.perf_counter()
                client.get(url, query)
                times.append(time.perf_counter() - start)
            out.append((statistics.median(times), queries, rows))
        return out

    grow(*SMALL)
    before = measure()
    started = time.perf_counter()
    grow(*LARGE)
    made = time.perf_counter() - started
    after = measure()
    print(f"bench_admin: {environment()}; medians of {ROUNDS} rounds")
    print(f"Admin and health page ({LARGE[0]:,} customers / {LARGE[1]:,} events vs "
          f"{SMALL[0]:,} / {SMALL[1]:,}; rows made in {made:.0f} s)")
    worst = 0.0
    for (name, _, _), (t_small, q_small, r_small), (t_large, q_large, r_large) in zip(
            PAGES, before, after, strict=True):
        ratio = t_large / t_small
        worst = max(worst, ratio)
        # A page showing more rows at the large size is dearer for that reason alone.
        rows = f", rows {r_large} vs {r_small}" if r_large != r_small else ""
        row(f"{name} (queries {q_large} vs {q_small}{rows})", f"{t_large * 1000:.1f} ms",
            f"{t_small * 1000:.1f} ms", ratio, "<= 1.5x, same queries")
    print(f"  worst ratio {worst:.2f}x")


if __name__ == "__main__":
    main()
