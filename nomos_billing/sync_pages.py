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

from . import bulk, conf, instances, linking, page_links, reads
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
    # Customers this call inserted, as their values until an object is needed: they have no
    # subscriptions yet, and are linked to nobody.
    inserted: dict[str, dict[str, Any]] = {}
    if new_customers:
        inserted = _insert_customers(items, keys, new_customers, customers, fetch_customers)
    customer_pks = {cid: customer.pk for cid, customer in customers.items()}
    customer_pks.update((cid, row[_CUSTOMER_PK]) for cid, row in inserted.items())
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
        values = subscription_fields(item)
        values["customer_id"] = customer_pks[cid]
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
        prepared.append((item, subscription_id, cid, values, lead_id))
    # The rows this page changes (or reads older than) as objects, for the careful update.
    subscriptions = reads.by_key(NomosSubscription, "subscription_id", differing)
    pks = _insert_rows(list(inserts.values())) if inserts else {}
    if pks is None:
        inserts, pks = {}, {}  # a concurrent writer got one in first: each the careful way
    saved = _saved(NomosSubscription) if _listened() else None
    saved_customer = _saved(NomosCustomer)

    def customer_of(cid: str) -> NomosCustomer:
        customer = customers.get(cid)
        if customer is None:
            # Built once: the first link of a customer is seen by its next subscription.
            row = inserted[cid]
            customer = customers[cid] = saved_customer(row, row[_CUSTOMER_PK])
        return customer

    # Resolved once for the page, not per item (``USER_RESOLVERS`` is read and imported).
    resolvers = linking.get_resolvers()
    misses = page_links.miss_test(resolvers)

    def link_one(cid: str, item: dict[str, Any], lead_id: str) -> bool:
        # sync.link, without the resolvers where none of them can find anyone.
        if misses is not None and misses(item, lead_id):
            customer = customers.get(cid)  # None: inserted by this page, linked to nobody
            if customer is None or not customer.is_linked:
                linking.log_not_linked(cid)
            return False
        return link(customer_of(cid), item, lead_id, resolvers)

    results = []
    stale: set[int] = set()
    for item, subscription_id, cid, values, lead_id in prepared:
        created_customer = cid in new_customers
        new_row = inserts.pop(subscription_id, None)
        if new_row is not None:
            created, changed = True, True
            linked = link_one(cid, item, lead_id)
            if saved is not None:
                announce(saved(new_row, pks[subscription_id]), None)
        elif subscription_id in stored and subscription_id not in differing:
            # Unchanged: what update_subscription and link_and_announce would do for it.
            created, changed = False, False
            linked = link_one(cid, item, lead_id or stored[subscription_id][_LEAD])
        else:
            if subscription_id in subscriptions:
                row, created = subscriptions[subscription_id], False
                previous, changed = update_subscription(row, values, lead_id)
            else:
                row, created, previous, changed = store_subscription(
                    subscription_id, values, lead_id, new_customer=False
                )
            customer = customer_of(cid)
            linked = link_and_announce(customer, row, item, lead_id, previous, changed, resolvers)
        results.append(Stored(created_customer, created, linked))
        if changed and not created_customer:
            stale.add(customer_pks[cid])
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


def _listened() -> bool:
    """Whether a ``subscription_status_changed`` receiver needs each new subscription as an
    object (none listening: no object is built)."""
    return subscription_status_changed.has_listeners(NomosSubscription)


_CUSTOMER_PK = NomosCustomer._meta.pk.attname


def _saved(model: Any) -> Callable[[dict[str, Any], Any], Any]:
    """How a new row's values (as ``bulk.insert_rows`` left them) and primary key become the
    saved object Django would have."""
    make = instances.maker(model)
    pk_name = model._meta.pk.attname
    alias = router.db_for_write(model)

    def saved(values: dict[str, Any], pk: Any) -> Any:
        obj = make({**values, pk_name: pk})
        obj._state.adding = False
        obj._state.db = alias
        return obj

    return saved


def _insert_customers(
    items: list[dict[str, Any]],
    keys: list[tuple[str, str]],
    new_customers: set[str],
    customers: dict[str, NomosCustomer],
    fetch_customers: Callable[[set[str]], dict[str, dict[str, Any]]],
) -> dict[str, dict[str, Any]]:
    """Store the page's ``new_customers``: the rows inserted by one INSERT by id, their
    primary keys set (none when a concurrent writer stored one first, and each went the
    careful way into ``customers``)."""
    fetched = fetch_customers(new_customers)
    # A new customer's latest status: its newest subscription on this page.
    newest: dict[str, tuple[str, str]] = {}
    for item, (_, cid) in zip(items, keys, strict=True):
        if cid in new_customers:
            status = status_value(item.get("status"))
            key = (str(item.get("created_at") or ""), status)
            newest[cid] = max(newest.get(cid, key), key)
    # Values, not objects: most are never needed as one (``_store_page``'s ``customer_of``).
    rows = {
        cid: {"customer_id": cid, "latest_status": newest[cid][1], **customer_fields(fetched[cid])}
        for cid in sorted(new_customers)
    }
    pks: dict[str, Any] = {}

    def insert() -> None:
        pks.update(bulk.insert_rows(NomosCustomer, list(rows.values()), key="customer_id"))

    if atomic_insert(NomosCustomer, insert):
        for cid, row in rows.items():
            row[_CUSTOMER_PK] = pks[cid]
        return rows
    for cid in new_customers:  # someone else stored one of them meanwhile: one at a time
        data = {**fetched[cid], "id": cid}
        customers[cid] = upsert_customer(data, latest_status=newest[cid][1])[0]
    return {}


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
