"""Copy what Nomos says now into our rows: one subscription (with its customer) at a time.

Webhooks, ``nomos_sync`` and the admin's "Refresh from Nomos" all end here, so the rules live
in one place: upsert the customer and the subscription, never let an older read overwrite a
newer one, link the customer to a user (``linking.link_customer``) and announce status
changes (``subscription_status_changed``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, NamedTuple

from django.db import IntegrityError, transaction
from django.utils.dateparse import parse_datetime

from . import linking
from .client import get_client
from .models import NomosCustomer, NomosSubscription
from .signals import subscription_status_changed

logger = logging.getLogger("nomos_billing.sync")


class Upserted(NamedTuple):
    customer: NomosCustomer
    subscription: NomosSubscription
    customer_created: bool
    subscription_created: bool


def _text(value: Any, max_length: int) -> str:
    # Nomos may send null for optional strings; PostgreSQL would refuse an over-long value.
    return "" if value is None else str(value)[:max_length]


def _choice(value: Any, choices: Any) -> str:
    return value if value in choices.values else ""


def _datetime(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_datetime(value)
    except ValueError:
        return None


def customer_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Our ``NomosCustomer`` columns from a Nomos customer object."""
    return {
        "email": _text(data.get("email"), 254),
        "first_name": _text(data.get("first_name"), 100),
        "last_name": _text(data.get("last_name"), 100),
        "company_name": _text(data.get("company_name"), 100),
        "type": _choice(data.get("type"), NomosCustomer.Type) or NomosCustomer.Type.PERSON,
    }


def subscription_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Our ``NomosSubscription`` columns from a Nomos subscription object."""
    metadata = data.get("metadata")
    return {
        "status": _choice(data.get("status"), NomosSubscription.Status),
        "plan": _text(data.get("plan"), 64),
        "type": _choice(data.get("type"), NomosSubscription.Type),
        "number": _text(data.get("number"), 64),
        "start_at": _datetime(data.get("start_at")),
        "end_at": _datetime(data.get("end_at")),
        "terminated_at": _datetime(data.get("terminated_at")),
        "metadata": metadata if isinstance(metadata, dict) else {},
        "nomos_created_at": _datetime(data.get("created_at")),
        "nomos_updated_at": _datetime(data.get("updated_at")),
    }


def _locked_get_or_create(
    model: Any, lookup: dict[str, Any], defaults: dict[str, Any]
) -> tuple[Any, bool]:
    """Like ``get_or_create`` but the row comes back locked (``select_for_update``; a no-op on
    SQLite, whose writers are serialised anyway). Call inside ``transaction.atomic``."""
    obj = model._default_manager.select_for_update().filter(**lookup).first()
    if obj is not None:
        return obj, False
    try:
        with transaction.atomic():
            return model._default_manager.create(**lookup, **defaults), True
    except IntegrityError:
        # Someone else inserted it between our SELECT and INSERT: take theirs.
        return model._default_manager.select_for_update().get(**lookup), False


def upsert_customer(data: dict[str, Any]) -> tuple[NomosCustomer, bool]:
    """Create or update the ``NomosCustomer`` for a Nomos customer object."""
    customer_id = _text(data.get("id"), 64)
    if not customer_id:
        raise ValueError("Nomos customer object without id")
    fields = customer_fields(data)
    with transaction.atomic():
        customer, created = _locked_get_or_create(
            NomosCustomer, {"customer_id": customer_id}, fields
        )
        if not created:
            changed = [k for k, v in fields.items() if getattr(customer, k) != v]
            if changed:
                for name in changed:
                    setattr(customer, name, fields[name])
                customer.save(update_fields=[*changed, "updated_at"])
    return customer, created


def _customer_for(data: dict[str, Any]) -> tuple[NomosCustomer, bool]:
    embedded = data.get("customer")
    if isinstance(embedded, dict):
        return upsert_customer(embedded)
    if isinstance(embedded, str) and embedded:
        # List endpoints give only the id: fetch the customer only when it is new to us.
        existing = NomosCustomer.objects.filter(customer_id=embedded).first()
        if existing is not None:
            return existing, False
        return upsert_customer(get_client().get_customer(embedded))
    raise ValueError("Nomos subscription without customer")


def upsert_from_subscription(data: dict[str, Any], *, lead_id: str | None = None) -> Upserted:
    """Store a Nomos subscription (``GET /subscriptions/{id}`` or a list item) and its customer.

    ``data["customer"]`` is the embedded customer object, or just its id (list items), in which
    case the customer is fetched with ``get_customer`` only when we have no row for it yet.
    A read older than what we stored (``updated_at``) does not overwrite it: two deliveries
    processed at once may fetch in one order and write in the other.
    """
    subscription_id = _text(data.get("id"), 64)
    if not subscription_id:
        raise ValueError("Nomos subscription object without id")
    customer, customer_created = _customer_for(data)
    fields = subscription_fields(data)
    raw_lead = lead_id or data.get("lead")
    lead_id = _text(raw_lead, 64) if isinstance(raw_lead, str) else ""
    previous: str | None = None
    changed_status = False
    with transaction.atomic():
        subscription, created = _locked_get_or_create(
            NomosSubscription,
            {"subscription_id": subscription_id},
            {**fields, "customer": customer, "lead_id": lead_id},
        )
        if created:
            changed_status = True
        else:
            previous = subscription.status
            stored, incoming = subscription.nomos_updated_at, fields["nomos_updated_at"]
            if stored and incoming and incoming < stored:
                logger.info(
                    "Nomos subscription %s: ignoring a read older than the stored one",
                    subscription_id,
                )
            else:
                for name, value in fields.items():
                    setattr(subscription, name, value)
                subscription.customer = customer
                if lead_id and not subscription.lead_id:
                    subscription.lead_id = lead_id
                subscription.save()
                changed_status = subscription.status != previous
    if not customer.is_linked:
        linking.link_customer(
            linking.LinkRequest(
                customer=customer,
                subscription=data,
                lead_id=lead_id or subscription.lead_id or None,
            )
        )
    if changed_status:
        subscription_status_changed.send(
            sender=NomosSubscription,
            subscription=subscription,
            previous=previous,
            status=subscription.status,
        )
    return Upserted(customer, subscription, customer_created, created)


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
