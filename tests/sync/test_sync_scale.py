"""``nomos_sync`` over many subscriptions: what a page-at-a-time sync stores is exactly what
storing each subscription alone stores, and what it keeps between pages is on disk."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timezone
from io import StringIO
from typing import Any

import pytest
import requests
from django.core.management import call_command
from django.db import connection

from nomos_billing import bulk, reads
from nomos_billing.columns import (
    CUSTOMER_COLUMNS,
    SUBSCRIPTION_COLUMNS,
    customer_fields,
    subscription_fields,
)
from nomos_billing.models import NomosCustomer, NomosSubscription
from nomos_billing.sandbox.seeding import seed_subscriptions
from nomos_billing.stash import CustomerStash
from nomos_billing.sync import upsert_from_subscription

SKIP = {"id", "customer", "created_at", "updated_at"}


def rows() -> tuple[dict[str, Any], dict[str, Any]]:
    customers = {
        c["customer_id"]: {k: v for k, v in c.items() if k not in SKIP}
        for c in NomosCustomer.objects.values()
    }
    by_pk = dict(NomosCustomer.objects.values_list("pk", "customer_id"))
    subscriptions = {
        s["subscription_id"]: {
            **{k: v for k, v in s.items() if k not in SKIP and k != "customer_id"},
            "customer": by_pk[s["customer_id"]],
        }
        for s in NomosSubscription.objects.values()
    }
    return customers, subscriptions


@pytest.mark.django_db(transaction=True)
def test_a_sync_by_pages_stores_what_storing_each_alone_stores(nomos) -> None:
    # More new customers than WALK_AFTER: they are walked (100 per call) and stashed.
    seed_subscriptions(nomos, 260)
    call_command("nomos_sync", "--page-size", "40", stdout=StringIO())
    paged = rows()
    assert len(paged[1]) == len(nomos.subscriptions) == 263
    assert nomos.count("GET /customers") == 3
    assert nomos.count("GET /customers/{id}") == 0

    NomosSubscription.objects.all().delete()
    NomosCustomer.objects.all().delete()
    for subscription_id in nomos.subscriptions:
        upsert_from_subscription(nomos.subscription_view(subscription_id))
    assert rows() == paged

    # A catch-up over the same data changes nothing.
    call_command("nomos_sync", "--since", "2000-01-01T00:00:00Z", stdout=StringIO())
    assert rows() == paged


@pytest.mark.django_db
def test_fast_insert_writes_what_bulk_create_writes() -> None:
    moment = datetime(2026, 3, 1, 12, 30, 15, 123000, tzinfo=timezone.utc)

    def objects(prefix: str) -> list[NomosSubscription]:
        customer = NomosCustomer.objects.create(customer_id=f"cus_{prefix}", email="a@b.example")
        return [
            NomosSubscription(
                customer=customer, subscription_id=f"sub_{prefix}_{n}", status="active",
                plan="pln_x", type="feed_in", number="N1", start_at=moment, end_at=None,
                metadata={"n": n, "nested": {"ä": [1, 2.5, None]}} if n else {},
                lead_id="", nomos_created_at=moment, nomos_updated_at=moment,
            )
            for n in range(3)
        ]

    fast, slow = objects("fast"), objects("slow")
    bulk.insert(NomosSubscription, fast, key="subscription_id")
    NomosSubscription.objects.bulk_create(slow)
    assert all(obj.pk is not None and not obj._state.adding for obj in fast)

    def stored(objs: list[NomosSubscription]) -> list[dict[str, Any]]:
        values = NomosSubscription.objects.filter(pk__in=[o.pk for o in objs]).order_by("pk")
        return [{k: v for k, v in row.items() if k not in ("id", "customer_id", "created_at",
                                                           "updated_at", "subscription_id")}
                for row in values.values()]

    assert stored(fast) == stored(slow)
    assert [o.subscription_id for o in NomosSubscription.objects.filter(
        pk__in=[o.pk for o in fast]).order_by("pk")] == [o.subscription_id for o in fast]
    assert all(o.created_at is not None and o.updated_at is not None for o in fast)


@pytest.mark.django_db(transaction=True)
def test_a_receiver_gets_each_new_subscription_of_a_sync_saved(nomos, connect_receiver) -> None:
    from nomos_billing import signals

    seen: list[tuple[NomosSubscription, dict[str, Any], str | None, str]] = []

    def receiver(sender: Any, subscription: Any, previous: Any, status: Any, **kwargs: Any) -> None:
        # The row as stored at the moment of the signal, beside the object sent.
        stored = NomosSubscription.objects.filter(pk=subscription.pk).values().first()
        seen.append((subscription, stored, previous, status))

    seed_subscriptions(nomos, 30)
    connect_receiver(signals.subscription_status_changed, receiver)
    call_command("nomos_sync", "--page-size", "7", stdout=StringIO())
    assert len(seen) == NomosSubscription.objects.count() == 33
    fields = [f.attname for f in NomosSubscription._meta.concrete_fields]
    for subscription, stored, previous, status in seen:
        assert type(subscription) is NomosSubscription
        assert subscription.pk is not None and not subscription._state.adding
        assert {name: getattr(subscription, name) for name in fields} == stored
        assert (previous, status) == (None, stored["status"])
    with_receiver = rows()

    # The same walk with no one listening stores the same rows.
    seen.clear()
    signals.subscription_status_changed.disconnect(receiver)
    NomosSubscription.objects.all().delete()
    NomosCustomer.objects.all().delete()
    call_command("nomos_sync", "--page-size", "7", stdout=StringIO())
    assert rows() == with_receiver and seen == []


@pytest.mark.django_db
def test_rows_inserted_as_values_are_those_objects_would_be() -> None:
    moment = datetime(2026, 3, 1, 12, 30, 15, 123000, tzinfo=timezone.utc)
    customer = NomosCustomer.objects.create(customer_id="cus_a", email="a@b.example")

    def values(n: int) -> dict[str, Any]:
        return {"customer_id": customer.pk, "subscription_id": f"sub_{n}", "status": "active",
                "start_at": moment, "metadata": {"n": [n, None]}, "nomos_updated_at": moment}

    rows = [values(n) for n in range(3)]
    pks = bulk.insert_rows(NomosSubscription, rows, key="subscription_id")
    objs = [NomosSubscription(**values(n + 3)) for n in range(3)]
    bulk.insert(NomosSubscription, objs, key="subscription_id")
    assert set(pks) == {"sub_0", "sub_1", "sub_2"}
    # The given rows now carry the moments the INSERT stamped, and kept their own values.
    assert all(row["created_at"] == row["updated_at"] is not None for row in rows)
    assert rows[0]["start_at"] == moment and rows[0]["metadata"] == {"n": [0, None]}
    stored = {r["subscription_id"]: r for r in NomosSubscription.objects.values()}
    skip = {"id", "subscription_id", "created_at", "updated_at", "metadata"}
    for n in range(3):
        row = stored[f"sub_{n}"]
        assert row["id"] == pks[f"sub_{n}"]
        assert (row["created_at"], row["metadata"]) == (rows[n]["created_at"], {"n": [n, None]})
        assert {k: v for k, v in row.items() if k not in skip} == {
            k: v for k, v in stored[f"sub_{n + 3}"].items() if k not in skip}
    # A naive datetime takes Django's way (made aware, with its warning), as for objects.
    naive = {**values(9), "start_at": moment.replace(tzinfo=None)}
    with pytest.warns(RuntimeWarning):
        pk = bulk.insert_rows(NomosSubscription, [naive], key="subscription_id")["sub_9"]
    assert NomosSubscription.objects.get(pk=pk).start_at == moment


@pytest.mark.django_db
def test_reads_by_key_give_what_the_orm_gives() -> None:
    moment = datetime(2026, 3, 1, 12, 30, 15, tzinfo=timezone.utc)
    customer = NomosCustomer.objects.create(customer_id="cus_a", email="a@b.example")
    NomosSubscription.objects.create(
        customer=customer, subscription_id="sub_a", metadata={"n": [1, None]}, start_at=moment
    )
    found = reads.by_key(NomosSubscription, "subscription_id", ["sub_a", "sub_missing"])
    assert list(found) == ["sub_a"]
    assert found["sub_a"] == NomosSubscription.objects.get()
    assert (found["sub_a"].metadata, found["sub_a"].start_at) == ({"n": [1, None]}, moment)
    assert not found["sub_a"]._state.adding
    assert reads.values_by_key(NomosCustomer, "customer_id", ["cus_a", "cus_b"], ("email",)) == {
        "cus_a": ("a@b.example",)}
    assert reads.existing(NomosCustomer, "customer_id", {"cus_a", "cus_b"}) == {"cus_a"}
    assert reads.by_key(NomosCustomer, "customer_id", []) == {}
    assert reads.existing(NomosCustomer, "customer_id", []) == set()


@pytest.mark.django_db
def test_columns_read_to_compare_are_the_same_moments_and_change_no_other_read() -> None:
    moment = datetime(2026, 3, 1, 12, 30, 15, 123000, tzinfo=timezone.utc)
    customer = NomosCustomer.objects.create(customer_id="cus_a")
    NomosSubscription.objects.create(customer=customer, subscription_id="sub_a", start_at=moment)
    compared = reads.values_by_key(
        NomosSubscription, "subscription_id", ["sub_a"], ("start_at", "metadata"), compared=True)
    assert compared == {"sub_a": (moment, {})}
    # Django's reads on the same connection still carry its tzinfo.
    orm = NomosSubscription.objects.get()
    fast = reads.by_key(NomosSubscription, "subscription_id", ["sub_a"])["sub_a"]
    assert fast.start_at.tzinfo is orm.start_at.tzinfo
    assert orm.start_at == moment


@pytest.mark.django_db
def test_objects_read_by_key_are_those_django_builds() -> None:
    customer = NomosCustomer.objects.create(customer_id="cus_a", email="a@b.example")
    NomosSubscription.objects.create(customer=customer, subscription_id="sub_a", plan="p")
    orm = NomosSubscription.objects.get()
    fast = reads.by_key(NomosSubscription, "subscription_id", ["sub_a"])["sub_a"]
    fields = [f.attname for f in NomosSubscription._meta.concrete_fields]
    assert [getattr(fast, n) for n in fields] == [getattr(orm, n) for n in fields]
    assert (fast._state.adding, fast._state.db) == (False, orm._state.db)
    assert fast.customer == customer  # the relation loads as on any instance
    fast.plan = "q"
    fast.save(update_fields=["plan"])
    assert NomosSubscription.objects.get().plan == "q"
    built = bulk.new(NomosCustomer, {"customer_id": "cus_b"})
    assert (built.type, built.user_id, built._state.adding) == ("person", None, True)


@pytest.mark.django_db
def test_a_post_init_receiver_still_sees_every_object_built() -> None:
    from django.db.models.signals import post_init

    NomosCustomer.objects.create(customer_id="cus_a", email="a@b.example")
    seen: list[Any] = []

    def receiver(sender: Any, instance: Any, **kwargs: Any) -> None:
        seen.append(instance)

    post_init.connect(receiver, sender=NomosCustomer)
    try:
        found = reads.by_key(NomosCustomer, "customer_id", ["cus_a"])["cus_a"]
        built = bulk.new(NomosCustomer, {"customer_id": "cus_b"})
    finally:
        post_init.disconnect(receiver, sender=NomosCustomer)
    assert seen == [found, built]
    assert seen[0] is found and seen[1] is built


def test_the_customer_columns_are_those_customer_fields_fills() -> None:
    assert tuple(customer_fields({})) == CUSTOMER_COLUMNS
    assert tuple(subscription_fields({})) == SUBSCRIPTION_COLUMNS


def test_the_stash_gives_each_customer_back_once() -> None:
    with closing(CustomerStash()) as stash:
        stash.put({"id": f"cus_{n}", "email": f"{n}@example.com"} for n in range(1200))
        stash.put([{"id": "cus_5", "email": "new@example.com"}])
        found = stash.take(["cus_5", "cus_7", "cus_unknown", *[f"cus_{n}" for n in range(600)]])
        assert found["cus_5"] == {"id": "cus_5", "email": "new@example.com"}
        assert len(found) == 600 and "cus_unknown" not in found
        assert stash.take(["cus_5", "cus_1199"]) == {
            "cus_1199": {"id": "cus_1199", "email": "1199@example.com"}}


def test_a_stash_of_given_keys_gives_each_customer_back_as_put() -> None:
    odd = {"id": "cus_odd", "email": 7, "first_name": ["x"], "last_name": True, "type": None}
    plain = {"id": "cus_plain", "email": "a@b.example", "first_name": "", "extra": "dropped"}
    with closing(CustomerStash(("id", "email", "first_name", "last_name", "type"))) as stash:
        stash.put([odd, plain])
        found = stash.take(["cus_odd", "cus_plain", "cus_unknown"])
        assert found == {
            "cus_odd": {k: odd[k] for k in ("id", "email", "first_name", "last_name", "type")},
            "cus_plain": {"id": "cus_plain", "email": "a@b.example", "first_name": "",
                          "last_name": None, "type": None},
        }
        assert type(found["cus_odd"]["last_name"]) is bool
        assert stash.take(["cus_odd", "cus_plain"]) == {}


@pytest.mark.django_db
def test_a_sync_with_debug_on_does_not_keep_every_query(nomos, settings) -> None:
    settings.DEBUG = True
    seed_subscriptions(nomos, 120)
    call_command("nomos_sync", "--page-size", "10", stdout=StringIO())
    assert NomosSubscription.objects.count() == 123
    # Django's own log (up to 9,000 queries under DEBUG) holds at most the last page's.
    assert len(connection.queries_log) < 20


@pytest.fixture
def sandbox_process(settings) -> Iterator[str]:
    """A sandbox in a process of its own (its pages and request log are not in this
    process's memory), NOMOS_BILLING pointing at it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with subprocess.Popen(
        [sys.executable, "-m", "nomos_billing.sandbox", "--port", str(port), "--no-seed"],
        stdout=subprocess.DEVNULL,
    ) as process:
        try:
            for _ in range(100):
                try:
                    requests.get(f"{url}/_sandbox/calls", timeout=1)
                    break
                except requests.ConnectionError:
                    time.sleep(0.1)
            settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "API_BASE_URL": url}
            yield url
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.mark.live
@pytest.mark.django_db
def test_a_first_sync_holds_no_more_python_memory_for_more_customers(sandbox_process) -> None:
    import tracemalloc

    def peak(total: int) -> int:
        NomosSubscription.objects.all().delete()
        NomosCustomer.objects.all().delete()
        requests.post(f"{sandbox_process}/_sandbox/seed", json={"subscriptions": total})
        tracemalloc.start()
        try:
            call_command("nomos_sync", stdout=StringIO())
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(100)  # imports, caches and the client's first use, out of the figures
    small, large = peak(300), peak(1500)
    assert NomosSubscription.objects.count() == 1500
    # Keeping each walked customer for the whole walk (as a dict, as before) cost about
    # 0.6 KB each: 1,200 more were 900 KB more. What a page needs is the same at both sizes;
    # what differs (about 200 KB) is noise such as CPython's free lists.
    assert large - small < 450 * 1024, (small, large)


@pytest.mark.django_db
def test_a_catch_up_page_reads_the_customers_nomos_changed_in_one_select(
    django_assert_num_queries,
):
    from nomos_billing.sync_pages import refresh_customers

    items = [{"id": f"cus_page{i}", "email": f"p{i}@example.com", "name": f"P {i}"}
             for i in range(6)]
    for item in items:
        NomosCustomer.objects.create(customer_id=item["id"], **customer_fields(item))
    NomosCustomer.objects.filter(customer_id="cus_page5").delete()  # gone meanwhile
    walked = [{**item, "email": f"new{i}@example.com"} if i in (1, 3, 5) else item
              for i, item in enumerate(items)]

    # The page's columns, the changed rows, one UPDATE for each of the two still stored.
    with django_assert_num_queries(4):
        known, changed = refresh_customers(walked)

    assert known == {f"cus_page{i}" for i in range(5)} and changed == 2
    assert sorted(NomosCustomer.objects.filter(email__startswith="new").values_list(
        "customer_id", flat=True)) == ["cus_page1", "cus_page3"]


@pytest.mark.django_db
def test_a_page_compares_columns_and_touches_only_what_changed(connect_receiver, caplog) -> None:
    from nomos_billing import signals
    from nomos_billing.sync_pages import upsert_subscriptions

    def item(sid: str, **changes: Any) -> dict[str, Any]:
        return {"id": sid, "customer": "cus_page", "status": "active", "plan": "p",
                "metadata": {"k": [1]}, "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-02-01T00:00:00Z", **changes}

    upsert_from_subscription({**item("sub_a"), "customer": {"id": "cus_page", "email": "c@e.x"}})
    for sid in ("sub_b", "sub_c", "sub_d"):
        upsert_from_subscription(item(sid))
    before = {s.subscription_id: s for s in NomosSubscription.objects.all()}
    seen: list[tuple[str, Any, Any]] = []
    connect_receiver(signals.subscription_status_changed,
                     lambda sender, subscription, previous, status, **kw: seen.append(
                         (subscription.subscription_id, previous, status)))

    def no_fetch(ids: set[str]) -> dict[str, dict[str, Any]]:
        raise AssertionError(ids)

    page = [
        item("sub_a"),
        item("sub_b", status="ended", updated_at="2026-03-01T00:00:00Z"),
        item("sub_c", plan="older", updated_at="2026-01-15T00:00:00Z"),
        item("sub_d", lead="lead_1"),
        item("sub_a"),
    ]
    with caplog.at_level("INFO", logger="nomos_billing.sync"):
        results = upsert_subscriptions(page, no_fetch)
    after = {s.subscription_id: s for s in NomosSubscription.objects.all()}
    assert [r.subscription_created for r in results] == [False] * 5
    assert seen == [("sub_b", "active", "ended")]
    assert after["sub_a"].updated_at == before["sub_a"].updated_at
    assert (after["sub_b"].status, after["sub_c"].plan, after["sub_d"].lead_id) == (
        "ended", "p", "lead_1")
    assert after["sub_c"].updated_at == before["sub_c"].updated_at
    assert "sub_c: ignoring a read older than the stored one" in caplog.text
