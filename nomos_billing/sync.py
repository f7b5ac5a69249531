"""Copy what Nomos says now into our rows: one subscription (with its customer) at a time.

Webhooks, ``nomos_sync`` (a page at a time through ``sync_pages``; also
``leads.check_open_leads``) and the admin's "Refresh from Nomos" all end here, so the rules live
in one place: upsert the customer and the subscription, never let an older read overwrite a
newer one, link the customer to a user (``linking.link_customer``) and announce status changes
(``subscription_status_changed``).
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

from . import linking
from .client import get_client
from .columns import customer_fields, subscription_fields, text
from .models import NomosCustomer, NomosSubscription, SubscriptionStatus
from .signals import subscription_status_changed

logger = logging.getLogger("nomos_billing.sync")

# ``SubscriptionStatus.values`` builds a list on every read; a sync reads it once per item.
KNOWN_STATUSES = frozenset(SubscriptionStatus.values)


class Upserted(NamedTuple):
    customer: NomosCustomer
    subscription: NomosSubscription
    customer_created: bool
    subscription_created: bool
    #: The resolvers linked the customer to a user just now.
    linked: bool = False


def _changes(obj: Any, fields: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if getattr(obj, name) != value}


def save_changes(row: NomosCustomer, fields: dict[str, Any]) -> bool:
    """Write the columns of ``fields`` that differ from ``row`` (nothing when none do)."""
    changed = _changes(row, fields)
    for name, value in changed.items():
        setattr(row, name, value)
    if changed:
        row.save(update_fields=[*changed, "updated_at"])
    return bool(changed)


def atomic_insert(model: Any, insert: Callable[[], Any]) -> bool:
    """Run ``insert`` (one INSERT, all rows or none); False when a row already existed."""
    # Inside a transaction a failed INSERT needs a savepoint to roll back to; in autocommit it
    # is one statement that failed alone, and a savepoint block would add BEGIN and COMMIT.
    nested = transaction.get_connection(router.db_for_write(model)).in_atomic_block
    try:
        with transaction.atomic() if nested else nullcontext():
            insert()
    except IntegrityError:
        return False
    return True


def _insert(model: Any, lookup: dict[str, Any], fields: dict[str, Any]) -> Any | None:
    """INSERT the row, or None when another writer inserted the same key first."""
    created: list[Any] = []

    def insert() -> None:
        created.append(model._default_manager.create(**lookup, **fields))

    return created[0] if atomic_insert(model, insert) else None


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
    save_changes(customer, fields)
    return customer, False


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


def store_subscription(
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
    return (row, False, *update_subscription(row, values, lead_id))


def update_subscription(
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
    lead_id = item_lead(data, lead_id)
    subscription, created, previous, changed_status = store_subscription(
        subscription_id, values, lead_id, new_customer=customer_created
    )
    if changed_status and not customer_created:
        refresh_latest_status(customer.pk)
    linked = link_and_announce(customer, subscription, data, lead_id, previous, changed_status)
    return Upserted(customer, subscription, customer_created, created, linked)


def link_and_announce(
    customer: NomosCustomer,
    subscription: NomosSubscription,
    data: dict[str, Any],
    lead_id: str,
    previous: str | None,
    changed: bool,
    resolvers: list[tuple[str, Any]] | None = None,
) -> bool:
    """Link an unlinked customer (True if linked now) and announce a status change."""
    linked = link(customer, data, lead_id or subscription.lead_id, resolvers)
    if changed:
        announce(subscription, previous)
    return linked


def link(
    customer: NomosCustomer,
    data: dict[str, Any],
    lead_id: str,
    resolvers: list[tuple[str, Any]] | None = None,
) -> bool:
    """Link ``customer`` if it is unlinked (True if linked now); ``lead_id``: the event's, or
    the one stored with the subscription ``data`` is."""
    if customer.is_linked:
        return False
    return linking.link_customer(
        linking.LinkRequest(customer=customer, subscription=data, lead_id=lead_id or None),
        resolvers=resolvers,
    )


def announce(subscription: NomosSubscription, previous: str | None) -> None:
    """``subscription_status_changed`` for a subscription whose status changed (or is new)."""
    if subscription.status in KNOWN_STATUSES:
        # Receivers act on the statuses they know: one Nomos added later is stored, not
        # announced (its meaning is unknown to them).
        subscription_status_changed.send(
            sender=NomosSubscription,
            subscription=subscription,
            previous=previous,
            status=subscription.status,
        )


def item_lead(data: dict[str, Any], lead_id: str | None = None) -> str:
    raw = lead_id or data.get("lead")
    return text(raw, 64) if isinstance(raw, str) else ""


def refresh_latest_status(customer_pk: int) -> None:
    """Set ``NomosCustomer.latest_status`` from the customer's newest subscription (one UPDATE).
    Called whenever a subscription of an existing customer is created or changes status."""
    newest = NomosSubscription.objects.filter(customer=OuterRef("pk")).order_by(
        "-nomos_created_at", "-created_at"
    )
    NomosCustomer.objects.filter(pk=customer_pk).update(
        latest_status=Coalesce(Subquery(newest.values("status")[:1]), Value(""))
    )


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
