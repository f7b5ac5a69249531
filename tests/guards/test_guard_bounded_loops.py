"""Loops that must end, asserted by count and in well under a second, never through
pytest-timeout: a re-enqueue or retry counter that stops counting, a cursor Nomos hands out
twice, a writer that always loses its race, a sweep over many stuck events.

The other bounded loops have their counts beside their features: the worker's re-enqueues
(test_tasks.py, ``work`` itself refuses to run more than ``MAX_JOBS``), the client's retries
(test_client.py), the token renewal's wait (test_tokens_branches.py).
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import responses
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from nomos_billing import columns, sync, takeover, workers
from nomos_billing.client import NomosClient
from nomos_billing.exceptions import NomosAPIError
from nomos_billing.models import NomosCustomer, NomosSubscription, WebhookEvent

pytestmark = pytest.mark.django_db

BASE = "https://nomos.test"


@pytest.fixture
def api() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(BASE + "/oauth/token", json={"access_token": "at", "expires_in": 3600})
        yield mock


@pytest.mark.parametrize("cycle", [["c1"], ["c1", "c2"], ["c1", "c2", "c3"]],
                         ids=["same cursor", "two-cursor cycle", "three-cursor cycle"])
def test_a_cursor_handed_out_again_ends_the_walk(api, cycle):
    asked: list[str | None] = []

    def page(request: Any) -> tuple[int, dict[str, str], str]:
        asked.append(dict(parse_qsl(urlsplit(request.url).query)).get("cursor"))
        n = len(asked)
        # A bound of the test's own: a walk that does not stop ends here and fails by count.
        more = n < 50
        body = {"items": [{"id": f"cus_{n}"}], "has_more": more,
                "next_page": cycle[(n - 1) % len(cycle)]}
        return 200, {}, json.dumps(body)

    api.add_callback(responses.GET, BASE + "/customers", callback=page,
                     content_type="application/json")
    client = NomosClient(base_url=BASE, client_id="id", client_secret="secret", max_retries=0)
    started = time.monotonic()
    with pytest.raises(NomosAPIError) as info:
        list(client.iter_customers(limit=1))
    assert info.value.code == "INVALID_RESPONSE"
    assert "next_page repeats an earlier cursor" in str(info.value)
    # The first page, one per cursor, and the page that repeats one: then it stops.
    assert asked == [None, *cycle]
    assert time.monotonic() - started < 1


def test_a_writer_that_always_loses_its_race_gives_up_after_ten_tries(monkeypatch):
    customer = NomosCustomer.objects.create(customer_id="cus_race")
    row = NomosSubscription.objects.create(subscription_id="sub_race", customer=customer,
                                           status="active")
    # Another worker changed the status, and (as if it kept writing between each of our reads
    # and writes) our read never catches up with it.
    NomosSubscription.objects.filter(pk=row.pk).update(status="paused")
    monkeypatch.setattr(NomosSubscription, "refresh_from_db", lambda self, *a, **kw: None)
    values = {**columns.subscription_fields({"id": "sub_race", "status": "canceled"}),
              "customer_id": customer.pk}
    values["nomos_updated_at"] = None
    started = time.monotonic()
    with CaptureQueriesContext(connection) as queries, pytest.raises(RuntimeError):
        sync.update_subscription(row, values, "")
    updates = [q for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == 10
    assert NomosSubscription.objects.get(pk=row.pk).status == "paused"
    assert time.monotonic() - started < 1


def test_one_look_puts_back_at_most_a_batch_and_the_next_delivery_looks_again(monkeypatch,
                                                                              settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "nomos"}
    workers.seen("nomos")  # a worker is alive to take them: put back, not processed here
    queued: list[str] = []
    monkeypatch.setattr("nomos_billing.tasks.enqueue",
                        lambda event_id, **kw: queued.append(event_id))
    old = timezone.now() - timedelta(minutes=5)
    WebhookEvent.objects.bulk_create(
        WebhookEvent(event_id=f"evt_{n:03}", topic="invoice.paid", payload={}, status="processing",
                     claimed_at=old, attempts=1)
        for n in range(takeover.QUEUED_BATCH + 5)
    )
    started = time.monotonic()
    takeover.after_delivery(time.monotonic() + 10)
    assert len(queued) == takeover.QUEUED_BATCH
    # More were stuck: the next delivery looks at once, and takes the rest.
    takeover.after_delivery(time.monotonic() + 10)
    assert len(queued) == takeover.QUEUED_BATCH + 5
    assert len(set(queued)) == len(queued)
    # Nothing left: the next look finds nothing and waits its interval.
    takeover.after_delivery(time.monotonic() + 10)
    takeover.after_delivery(time.monotonic() + 10)
    assert len(queued) == takeover.QUEUED_BATCH + 5
    assert time.monotonic() - started < 1
