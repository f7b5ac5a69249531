"""Copy what Nomos says now into our rows: one subscription (with its customer) at a time.

Webhooks, ``nomos_sync`` (also ``leads.check_open_leads``) and the admin's "Refresh from
Nomos" all end here, so the rules live in one place: upsert the customer and the subscription,
never let an older read overwrite a newer one, link the customer to a user
(``linking.link_customer``) and announce status changes (``subscription_status_changed``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, NamedTuple

from django.db import IntegrityError, router, transaction
from django.db.models import OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import bulk, linking
from .client import get_client
from .columns import CUSTOMER_COLUMNS, customer_fields, status_value, subscription_fields, text
from .models import NomosCustomer, NomosSubscription, SubscriptionStatus
from .signals import subscription_status_changed

logger = logging.getLogger("nomos_billing.sync")

# ``SubscriptionStatus.values`` builds a list on every read; a sync reads it once per item.
_KNOWN_STATUSES = frozenset(SubscriptionStatus.values)


class Upserted(NamedTuple):
    customer: NomosCustomer
    subscription: NomosSubscription
    customer_created: bool
    subscription_created: bool
    #: The resolvers linked the customer to a user just now.
    linked: bool = False


def _changes(obj: Any, fields: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if getattr(obj, name) != value}


def _save_changes(row: NomosCustomer, fields: dict[str, Any]) -> bool:
    """Write the columns of ``fields`` that differ from ``row`` (nothing when none do)."""
    changed = _changes(row, fields)
    for name, value in changed.items():
        setattr(row, name, value)
    if changed:
        row.save(update_fields=[*changed, "updated_at"])
    return bool(changed)


def _insert(model: Any, lookup: dict[str, Any], fields: dict[str, Any]) -> Any | None:
    """INSERT the row, or None when another writer inserted the same key first."""
    # Inside a transaction a failed INSERT needs a savepoint to roll back to; in autocommit it
    # is one statement that failed alone, and a savepoint block would add BEGIN and COMMIT.
    nested = transaction.get_connection(router.db_for_write(model)).in_atomic_block
    try:
        with transaction.atomic() if nested else nullcontext():
            return model._default_manager.create(**lookup, **fields)
    except IntegrityError:
        return None


def upsert_customer(data: dict[str, Any], *, latest_status: str = "") -> tuple[NomosCustomer, bool]:
    """Create or update the ``NomosCustomer`` for a Nomos customer object.

    One SELECT, then an INSERT for a new customer or an UPDATE of the changed columns only;
    nothing is written when nothing changed. No lock: every writer writes what Nomos says.
    ``latest_status``: for a new customer, the status of the subscription being stored with it.
    """
    customer_id = text(data.get("id"), 64)
    if not customer_id:
        raise ValueError("Nomos customer object without id")
    fields = customer_fields(data)
    customer = NomosCustomer.objects.filter(customer_id=customer_id).first()
    if customer is None:
        customer = _insert(
            NomosCustomer, {"customer_id": customer_id}, {**fields, "latest_status": latest_status}
        )
        if customer is not None:
            return customer, True
        customer = NomosCustomer.objects.get(customer_id=customer_id)
    _save_changes(customer, fields)
    return customer, False


def refresh_customers(items: list[dict[str, Any]]) -> tuple[set[str], int]:
    """Update our rows of the customers in ``items`` (Nomos customer objects) whose fields
    Nomos changed: one SELECT of their columns for them all, then per changed customer its
    row and one UPDATE of the changed columns. Returns the ids we have rows for and how many
    rows changed."""
    ids = [text(item.get("id"), 64) for item in items]
    # Columns, not objects: a catch-up walks every customer and finds few changed.
    stored = bulk.values_by_key(NomosCustomer, "customer_id", ids, CUSTOMER_COLUMNS)
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
            changed += _save_changes(row, differing[row.customer_id])
    return set(stored), changed


def _customer_for(data: dict[str, Any], status: str) -> tuple[NomosCustomer, bool]:
    embedded = data.get("customer")
    if isinstance(embedded, dict):
        return upsert_customer(embedded, latest_status=status)
    if isinstance(embedded, str) and embedded:
        # List endpoints give only the id: fetch the customer only when it is new to us.
        existing = NomosCustomer.objects.filter(customer_id=embedded).first()
        if existing is not None:
            return existing, False
        return upsert_customer(get_client().get_customer(embedded), latest_status=status)
    raise ValueError("Nomos subscription without customer")


def _store_subscription(
    subscription_id: str, values: dict[str, Any], lead_id: str, *, new_customer: bool
) -> tuple[NomosSubscription, bool, str | None, bool]:
    """``(subscription, created, previous status, status changed)``."""
    lookup = {"subscription_id": subscription_id}
    # A customer we just created has no subscriptions yet: go straight to the INSERT.
    row = None if new_customer else NomosSubscription.objects.filter(**lookup).first()
    if row is None:
        row = _insert(NomosSubscription, lookup, {**values, "lead_id": lead_id})
        if row is not None:
            return row, True, None, True
        row = NomosSubscription.objects.get(**lookup)
    return (row, False, *_update_subscription(row, values, lead_id))


def _update_subscription(
    row: NomosSubscription, values: dict[str, Any], lead_id: str
) -> tuple[str | None, bool]:
    """Write what changed into ``row``; ``(previous status, status changed)``.

    One conditional UPDATE of the changed columns only, and only if the stored
    ``nomos_updated_at`` is not newer than the read (two deliveries processed at once may fetch
    in one order and write in the other) and the status is still the one we compared against;
    a concurrent writer that got in between makes us read again. A read that changes nothing
    writes nothing.
    """
    for _ in range(10):
        stored, incoming = row.nomos_updated_at, values["nomos_updated_at"]
        if stored and incoming and incoming < stored:
            logger.info(
                "Nomos subscription %s: ignoring a read older than the stored one",
                row.subscription_id,
            )
            return row.status, False
        changed = _changes(row, values)
        if lead_id and not row.lead_id:
            changed["lead_id"] = lead_id
        if not changed:
            return row.status, False
        now = timezone.now()
        guard = Q(status=row.status)
        if incoming:
            guard &= Q(nomos_updated_at__isnull=True) | Q(nomos_updated_at__lte=incoming)
        if NomosSubscription.objects.filter(guard, pk=row.pk).update(**changed, updated_at=now):
            previous = row.status
            for name, value in changed.items():
                setattr(row, name, value)
            row.updated_at = now
            return previous, row.status != previous
        row.refresh_from_db()
    raise RuntimeError(f"Nomos subscription {row.subscription_id}: too many concurrent writers")


def upsert_from_subscription(data: dict[str, Any], *, lead_id: str | None = None) -> Upserted:
    """Store a Nomos subscription (``GET /subscriptions/{id}`` or a list item) and its customer.

    ``data["customer"]`` is the embedded customer object, or just its id (list items), in which
    case the customer is fetched with ``get_customer`` only when we have no row for it yet.
    A read older than what we stored (``updated_at``) does not overwrite it: two deliveries
    processed at once may fetch in one order and write in the other.
    """
    subscription_id = text(data.get("id"), 64)
    if not subscription_id:
        raise ValueError("Nomos subscription object without id")
    fields = subscription_fields(data)
    customer, customer_created = _customer_for(data, fields["status"])
    values = {**fields, "customer_id": customer.pk}
    lead_id = _item_lead(data, lead_id)
    subscription, created, previous, changed_status = _store_subscription(
        subscription_id, values, lead_id, new_customer=customer_created
    )
    if changed_status and not customer_created:
        refresh_latest_status(customer.pk)
    linked = _link_and_announce(customer, subscription, data, lead_id, previous, changed_status)
    return Upserted(customer, subscription, customer_created, created, linked)


def _link_and_announce(
    customer: NomosCustomer,
    subscription: NomosSubscription,
    data: dict[str, Any],
    lead_id: str,
    previous: str | None,
    changed: bool,
    resolvers: list[tuple[str, Any]] | None = None,
) -> bool:
    """Link an unlinked customer (True if linked now) and announce a status change."""
    linked = False
    if not customer.is_linked:
        linked = linking.link_customer(
            linking.LinkRequest(
                customer=customer,
                subscription=data,
                lead_id=lead_id or subscription.lead_id or None,
            ),
            resolvers=resolvers,
        )
    if changed and subscription.status in _KNOWN_STATUSES:
        # Receivers act on the statuses they know: one Nomos added later is stored, not
        # announced (its meaning is unknown to them).
        subscription_status_changed.send(
            sender=NomosSubscription,
            subscription=subscription,
            previous=previous,
            status=subscription.status,
        )
    return linked


def _item_lead(data: dict[str, Any], lead_id: str | None = None) -> str:
    raw = lead_id or data.get("lead")
    return text(raw, 64) if isinstance(raw, str) else ""


def upsert_subscriptions(
    items: list[dict[str, Any]], fetch_customers: Callable[[set[str]], dict[str, dict[str, Any]]]
) -> list[Upserted]:
    """Store a page of ``GET /subscriptions`` list items as ``upsert_from_subscription`` stores
    each one (same rules: older reads ignored, only changes written, resolvers, signals), in a
    handful of statements for the whole page: one SELECT for the page's customers and one for
    its subscriptions, one INSERT for the new customers and one for the new subscriptions.

    List items carry only the customer's id: ``fetch_customers(ids)`` returns the Nomos
    customer objects of those we have no row for (``nomos_sync`` fetches them by page). Every
    item must have a string ``id`` and ``customer``.
    """
    keys = [(text(item["id"], 64), _customer_id_of(item)) for item in items]
    customer_ids = {cid for _, cid in keys}
    customers = bulk.by_key(NomosCustomer, "customer_id", customer_ids)
    new_customers = customer_ids - customers.keys()
    # Customers this call inserted: they have no subscriptions yet.
    inserted: set[str] = set()
    if new_customers:
        inserted = _insert_customers(items, keys, new_customers, customers, fetch_customers)
    # Only the subscriptions of customers we had are looked for (none on a first sync's
    # page), as ``upsert_from_subscription`` does: one stored meanwhile fails the INSERT below
    # and each is then stored the careful way.
    subscriptions = bulk.by_key(
        NomosSubscription, "subscription_id", {sid for sid, cid in keys if cid not in inserted}
    )
    prepared = []
    inserts: dict[str, NomosSubscription] = {}
    for item, (subscription_id, cid) in zip(items, keys, strict=True):
        customer = customers[cid]
        values = {**subscription_fields(item), "customer_id": customer.pk}
        lead_id = _item_lead(item)
        if subscription_id not in subscriptions and subscription_id not in inserts:
            inserts[subscription_id] = bulk.new(
                NomosSubscription,
                {"subscription_id": subscription_id, "lead_id": lead_id, **values},
            )
        prepared.append((item, subscription_id, customer, values, lead_id))
    if inserts and not _bulk_insert(NomosSubscription, list(inserts.values()), "subscription_id"):
        inserts = {}  # a concurrent writer got one in first: store each the careful way
    results = []
    stale: set[int] = set()
    # Resolved once for the page, not per item (``USER_RESOLVERS`` is read and imported).
    resolvers = linking.get_resolvers()
    for item, subscription_id, customer, values, lead_id in prepared:
        created_customer = customer.customer_id in new_customers
        row = inserts.pop(subscription_id, None)
        if row is not None:
            created, previous, changed = True, None, True
        elif subscription_id in subscriptions:
            row, created = subscriptions[subscription_id], False
            previous, changed = _update_subscription(row, values, lead_id)
        else:
            row, created, previous, changed = _store_subscription(
                subscription_id, values, lead_id, new_customer=False
            )
        linked = _link_and_announce(customer, row, item, lead_id, previous, changed, resolvers)
        results.append(Upserted(customer, row, created_customer, created, linked))
        if changed and not created_customer:
            stale.add(customer.pk)
    for pk in sorted(stale):
        refresh_latest_status(pk)
    return results


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
    rows = [
        bulk.new(
            NomosCustomer,
            {"customer_id": cid, "latest_status": newest[cid][1], **customer_fields(fetched[cid])},
        )
        for cid in sorted(new_customers)
    ]
    if _bulk_insert(NomosCustomer, rows, "customer_id"):
        customers.update((c.customer_id, c) for c in rows)
        return new_customers
    for cid in new_customers:  # someone else stored one of them meanwhile: one at a time
        data = {**fetched[cid], "id": cid}
        customers[cid] = upsert_customer(data, latest_status=newest[cid][1])[0]
    return set()


def refresh_latest_status(customer_pk: int) -> None:
    """Set ``NomosCustomer.latest_status`` from the customer's newest subscription (one UPDATE).
    Called whenever a subscription of an existing customer is created or changes status."""
    newest = NomosSubscription.objects.filter(customer=OuterRef("pk")).order_by(
        "-nomos_created_at", "-created_at"
    )
    NomosCustomer.objects.filter(pk=customer_pk).update(
        latest_status=Coalesce(Subquery(newest.values("status")[:1]), Value(""))
    )


def _customer_id_of(item: dict[str, Any]) -> str:
    customer = item["customer"]
    return text(customer["id"] if isinstance(customer, dict) else customer, 64)


def _bulk_insert(model: Any, rows: list[Any], key: str) -> bool:
    """One INSERT for all ``rows`` (primary keys set on PostgreSQL and SQLite); False, with
    nothing inserted, when one of them already exists."""
    # As in _insert: a savepoint only inside a transaction. In autocommit the INSERT fails
    # alone (bulk.insert is all or nothing), and a block would add BEGIN and COMMIT.
    nested = transaction.get_connection(router.db_for_write(model)).in_atomic_block
    try:
        with transaction.atomic() if nested else nullcontext():
            bulk.insert(model, rows, key=key)
    except IntegrityError:
        for row in rows:
            row.pk = None
            row._state.adding = True
        return False
    return True


def refresh_customer(customer: NomosCustomer) -> int:
    """Re-read one customer and all its subscriptions from Nomos; returns how many
    subscriptions were stored. Raises ``NomosError`` when Nomos cannot be asked."""
    client = get_client()
    upsert_customer(client.get_customer(customer.customer_id))
    count = 0
    for item in client.iter_subscriptions(customer=customer.customer_id):
        upsert_from_subscription(item)
        count += 1
    customer.refresh_from_db()
    if not customer.is_linked:
        # A customer without subscriptions can still be linked by e-mail or a custom resolver.
        linking.link_customer(linking.LinkRequest(customer=customer))
    return count
