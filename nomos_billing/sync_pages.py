"""A page of ``GET /subscriptions`` list items stored at once (``nomos_sync``), with the rules
of ``sync.upsert_from_subscription``: older reads ignored, only changes written, the resolvers,
the signal. One SELECT for the page's customers and one for its subscriptions, one INSERT for
the new customers and one for the new subscriptions.

A first sync of 10,000 subscriptions spent about a fifth of its CPU building model objects
(issue 22). A new subscription therefore goes in as the values it is made of, and becomes an
object only for a ``subscription_status_changed`` receiver, which gets the saved row as
``upsert_from_subscription`` gives it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from django.db import router

from . import bulk, conf, instances, linking, reads
from .columns import (
    CUSTOMER_COLUMNS,
    SUBSCRIPTION_COLUMNS,
    customer_fields,
    status_value,
    subscription_fields,
    text,
)
from .models import NomosCustomer, NomosSubscription
from .signals import subscription_status_changed
from .sync import (
    announce,
    atomic_insert,
    item_lead,
    link,
    link_and_announce,
    refresh_latest_status,
    save_changes,
    store_subscription,
    update_subscription,
    upsert_customer,
)


class Stored(NamedTuple):
    """What storing one list item did."""

    customer_created: bool
    subscription_created: bool
    #: The resolvers linked the customer to a user just now.
    linked: bool


def refresh_customers(items: list[dict[str, Any]]) -> tuple[set[str], int]:
    """Update our rows of the customers in ``items`` (Nomos customer objects) whose fields
    Nomos changed: one SELECT of their columns for them all, then per changed customer its
    row and one UPDATE of the changed columns. Returns the ids we have rows for and how many
    rows changed."""
    ids = [text(item.get("id"), 64) for item in items]
    # Columns, not objects: a catch-up walks every customer and finds few changed.
    stored = reads.values_by_key(NomosCustomer, "customer_id", ids, CUSTOMER_COLUMNS)
    differing = {}
    for customer_id, item in zip(ids, items, strict=True):
        columns = stored.get(customer_id)
        if columns is not None:
            fields = customer_fields(item)
            if dict(zip(CUSTOMER_COLUMNS, columns, strict=True)) != fields:
                differing[customer_id] = fields
    changed = 0
    if differing:
        # The rows to update in one SELECT (one deleted meanwhile is simply not there).
        for row in NomosCustomer.objects.filter(customer_id__in=differing):
            changed += save_changes(row, differing[row.customer_id])
    return set(stored), changed


def upsert_subscriptions(
    items: list[dict[str, Any]], fetch_customers: Callable[[set[str]], dict[str, dict[str, Any]]]
) -> list[Stored]:
    """Store a page of ``GET /subscriptions`` list items as ``upsert_from_subscription`` stores
    each one, in a handful of statements for the whole page.

    List items carry only the customer's id: ``fetch_customers(ids)`` returns the Nomos
    customer objects of those we have no row for (``nomos_sync`` fetches them by page). Every
    item must have a string ``id`` and ``customer``.
    """
    # The resolvers read the same settings for every customer of the page: once each.
    with conf.held():
        return _store_page(items, fetch_customers)


def _store_page(
    items: list[dict[str, Any]], fetch_customers: Callable[[set[str]], dict[str, dict[str, Any]]]
) -> list[Stored]:
    keys = [(text(item["id"], 64), _customer_id_of(item)) for item in items]
    customer_ids = {cid for _, cid in keys}
    customers = reads.by_key(NomosCustomer, "customer_id", customer_ids)
    new_customers = customer_ids - customers.keys()
    # Customers this call inserted: they have no subscriptions yet.
    inserted: set[str] = set()
    if new_customers:
        inserted = _insert_customers(items, keys, new_customers, customers, fetch_customers)
    # Only the subscriptions of customers we had are looked for (none on a first sync's
    # page), as ``upsert_from_subscription`` does: one stored meanwhile fails the INSERT below
    # and each is then stored the careful way. Their columns first, not objects: a re-sync
    # finds most unchanged.
    stored = reads.values_by_key(
        NomosSubscription,
        "subscription_id",
        {sid for sid, cid in keys if cid not in inserted},
        _COMPARED,
        compared=True,
    )
    prepared = []
    inserts: dict[str, dict[str, Any]] = {}
    differing: set[str] = set()
    for item, (subscription_id, cid) in zip(items, keys, strict=True):
        customer = customers[cid]
        values = {**subscription_fields(item), "customer_id": customer.pk}
        lead_id = item_lead(item)
        columns = stored.get(subscription_id)
        if columns is None:
            if subscription_id not in inserts:
                inserts[subscription_id] = {
                    "subscription_id": subscription_id,
                    "lead_id": lead_id,
                    **values,
                }
        elif _differs(columns, values, lead_id):
            differing.add(subscription_id)
        prepared.append((item, subscription_id, customer, values, lead_id))
    # The rows this page changes (or reads older than) as objects, for the careful update.
    subscriptions = reads.by_key(NomosSubscription, "subscription_id", differing)
    pks = _insert_rows(list(inserts.values())) if inserts else {}
    if pks is None:
        inserts, pks = {}, {}  # a concurrent writer got one in first: each the careful way
    saved = _saved_subscription()
    results = []
    stale: set[int] = set()
    # Resolved once for the page, not per item (``USER_RESOLVERS`` is read and imported).
    resolvers = linking.get_resolvers()
    for item, subscription_id, customer, values, lead_id in prepared:
        created_customer = customer.customer_id in new_customers
        new_row = inserts.pop(subscription_id, None)
        if new_row is not None:
            created, changed = True, True
            linked = link(customer, item, lead_id, resolvers)
            if saved is not None:
                announce(saved(new_row, pks[subscription_id]), None)
        elif subscription_id in stored and subscription_id not in differing:
            # Unchanged: what update_subscription and link_and_announce would do for it.
            created, changed = False, False
            stored_lead = stored[subscription_id][_LEAD]
            linked = link(customer, item, lead_id or stored_lead, resolvers)
        else:
            if subscription_id in subscriptions:
                row, created = subscriptions[subscription_id], False
                previous, changed = update_subscription(row, values, lead_id)
            else:
                row, created, previous, changed = store_subscription(
                    subscription_id, values, lead_id, new_customer=False
                )
            linked = link_and_announce(customer, row, item, lead_id, previous, changed, resolvers)
        results.append(Stored(created_customer, created, linked))
        if changed and not created_customer:
            stale.add(customer.pk)
    for pk in sorted(stale):
        refresh_latest_status(pk)
    return results


#: What a page compares of a stored subscription with a list item's: the columns of
#: ``subscription_fields``, the customer and the lead.
_COMPARED = (*SUBSCRIPTION_COLUMNS, "customer_id", "lead_id")
_LEAD = _COMPARED.index("lead_id")


def _differs(columns: tuple[Any, ...], values: dict[str, Any], lead_id: str) -> bool:
    """Whether ``update_subscription`` would do more than nothing with the stored ``columns``
    (those of ``_COMPARED``): write a changed column or the lead, or log an older read."""
    row = dict(zip(_COMPARED, columns, strict=True))
    stored_at, incoming = row["nomos_updated_at"], values["nomos_updated_at"]
    if stored_at and incoming and incoming < stored_at:
        return True
    if lead_id and not row["lead_id"]:
        return True
    return any(row[name] != value for name, value in values.items())


def _saved_subscription() -> Callable[[dict[str, Any], Any], NomosSubscription] | None:
    """How a new subscription's values become the saved object a receiver gets, or None
    when no one listens (then no object is built)."""
    if not subscription_status_changed.has_listeners(NomosSubscription):
        return None
    make = instances.maker(NomosSubscription)
    pk_name = NomosSubscription._meta.pk.attname
    alias = router.db_for_write(NomosSubscription)

    def saved(values: dict[str, Any], pk: Any) -> NomosSubscription:
        subscription: NomosSubscription = make({**values, pk_name: pk})
        subscription._state.adding = False
        subscription._state.db = alias
        return subscription

    return saved


def _insert_customers(
    items: list[dict[str, Any]],
    keys: list[tuple[str, str]],
    new_customers: set[str],
    customers: dict[str, NomosCustomer],
    fetch_customers: Callable[[set[str]], dict[str, dict[str, Any]]],
) -> set[str]:
    """Store the page's ``new_customers`` into ``customers``; the ids of those inserted by one
    INSERT (none when a concurrent writer stored one first and each went the careful way)."""
    fetched = fetch_customers(new_customers)
    # A new customer's latest status: its newest subscription on this page.
    newest: dict[str, tuple[str, str]] = {}
    for item, (_, cid) in zip(items, keys, strict=True):
        if cid in new_customers:
            status = status_value(item.get("status"))
            key = (str(item.get("created_at") or ""), status)
            newest[cid] = max(newest.get(cid, key), key)
    make = instances.maker(NomosCustomer)
    rows = [
        make({"customer_id": cid, "latest_status": newest[cid][1], **customer_fields(fetched[cid])})
        for cid in sorted(new_customers)
    ]
    if atomic_insert(NomosCustomer, lambda: bulk.insert(NomosCustomer, rows, key="customer_id")):
        customers.update((c.customer_id, c) for c in rows)
        return new_customers
    for cid in new_customers:  # someone else stored one of them meanwhile: one at a time
        data = {**fetched[cid], "id": cid}
        customers[cid] = upsert_customer(data, latest_status=newest[cid][1])[0]
    return set()


def _insert_rows(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The new subscriptions' primary keys by id, or None, with nothing inserted, when one
    of them already exists."""
    pks: dict[str, Any] = {}

    def insert() -> None:
        pks.update(bulk.insert_rows(NomosSubscription, rows, key="subscription_id"))

    return pks if atomic_insert(NomosSubscription, insert) else None


def _customer_id_of(item: dict[str, Any]) -> str:
    customer = item["customer"]
    return text(customer["id"] if isinstance(customer, dict) else customer, 64)
