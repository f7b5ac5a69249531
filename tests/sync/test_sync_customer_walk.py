"""A first sync walks ``GET /customers`` as far as its pages need: customers listed in the
order of their subscriptions go straight into the page, the others wait in the stash."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from nomos_billing.client import NomosClient
from nomos_billing.models import NomosCustomer, NomosSubscription
from nomos_billing.sandbox.seeding import seed_subscriptions
from nomos_billing.stash import CustomerStash
from nomos_billing.sync import upsert_from_subscription

from .test_sync_scale import rows


class Reversed(list):  # type: ignore[type-arg]
    """A walk of every customer, the last first; complete."""

    complete = True
    incomplete = ""


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("order", ["as listed", "reversed"])
def test_a_first_sync_stores_every_customer_in_whatever_order_they_are_walked(
    nomos, monkeypatch, order
) -> None:
    seed_subscriptions(nomos, 330)
    put: list[str] = []
    original_put = CustomerStash.put

    def counted_put(self: CustomerStash, customers: Any) -> None:
        customers = list(customers)
        put.extend(c["id"] for c in customers)
        original_put(self, customers)

    monkeypatch.setattr(CustomerStash, "put", counted_put)
    if order == "reversed":
        walk = NomosClient.iter_customers
        monkeypatch.setattr(NomosClient, "iter_customers",
                            lambda self, **kw: Reversed(reversed(list(walk(self, **kw)))))
    call_command("nomos_sync", stdout=StringIO())
    paged = rows()
    assert len(paged[1]) == len(nomos.subscriptions) == 333
    assert nomos.count("GET /customers/{id}") == 0
    if order == "as listed":
        # Each page of subscriptions finds its customers on the page of the walk it asks
        # for: only a customer of the sandbox's own seed, whose subscriptions are listed
        # apart from it, waits in the stash; the walk is made once (4 calls for 333).
        assert len(put) <= 3 and all(c.startswith("cus_sandbox_") for c in put)
        assert nomos.count("GET /customers") == 4
    else:
        # The first page needs the last customers: those of the later pages (233 and
        # whichever of the sandbox's own the walk passes first) wait, each put once.
        assert len(put) == len(set(put)) and 233 <= len(put) <= 236

    NomosSubscription.objects.all().delete()
    NomosCustomer.objects.all().delete()
    for subscription_id in nomos.subscriptions:
        upsert_from_subscription(nomos.subscription_view(subscription_id))
    assert rows() == paged


@pytest.mark.django_db
def test_a_page_whose_json_holds_a_cycle_is_refused_as_bulk_create_refuses_it() -> None:
    from nomos_billing import bulk

    customer = NomosCustomer.objects.create(customer_id="cus_cycle", email="c@e.example")
    cyclic: dict[str, Any] = {"n": 1}
    cyclic["self"] = cyclic
    rows = [{"customer_id": customer.pk, "subscription_id": "sub_ok", "metadata": {"n": 2}},
            {"customer_id": customer.pk, "subscription_id": "sub_cycle", "metadata": cyclic}]

    with pytest.raises(ValueError, match="Circular reference"):
        bulk.insert_rows(NomosSubscription, rows, key="subscription_id")
    assert not NomosSubscription.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("year", [1700, 2026, 2250, 9999, 1])
def test_moments_are_written_to_the_microsecond_whatever_their_year_and_offset(year) -> None:
    from datetime import datetime, timedelta, timezone

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from nomos_billing import bulk

    customer = NomosCustomer.objects.create(customer_id="cus_moment", email="m@e.example")
    berlin = timezone(timedelta(hours=2))
    moment = datetime(year, 6, 30, 23, 59, 58, 999999, tzinfo=berlin)
    rows = [{"customer_id": customer.pk, "subscription_id": f"sub_m{n}", "start_at": moment,
             "end_at": None, "nomos_created_at": moment - timedelta(microseconds=n)}
            for n in range(3)]

    with CaptureQueriesContext(connection) as queries:
        pks = bulk.insert_rows(NomosSubscription, rows, key="subscription_id")

    stored = {s.pk: s for s in NomosSubscription.objects.all()}
    for n in range(3):
        row = stored[pks[f"sub_m{n}"]]
        assert (row.start_at, row.end_at) == (moment, None)
        assert row.nomos_created_at == moment - timedelta(microseconds=n)
        assert row.created_at is not None and row.updated_at is not None
    if connection.vendor == "postgresql":
        # Within 2**53 microseconds of 1970 as integers in one document; beyond, each
        # value the field's way (bulk_create).
        recordset = ["json_to_recordset" in q["sql"] for q in queries.captured_queries]
        assert recordset == [1685 < year < 2255]
