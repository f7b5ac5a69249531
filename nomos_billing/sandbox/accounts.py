"""The account's data: customers, subscriptions, leads, and what the hosted checkout makes of
them."""

from __future__ import annotations

import time
from typing import Any

from . import shapes
from .events import Events
from .hosts import checkout_url
from .links import MagicLinks
from .stores import DEFAULT_PLAN


class Accounts(Events, MagicLinks):
    # -- data ---------------------------------------------------------------------------------

    def add_customer(
        self,
        email: str,
        first_name: str = "Sandbox",
        last_name: str = "Customer",
        type: str = "person",
        id: str | None = None,
        *,
        company_name: str | None = None,
        created_at: str | None = None,
    ) -> dict[str, Any]:
        data = shapes.customer(
            id=id or shapes.new_id("cus"),
            email=email,
            first_name=first_name,
            last_name=last_name,
            type=type,
            company_name=company_name,
            created_at=created_at or self.now_iso(),
        )
        with self.lock:
            self.customers[data["id"]] = data
        return data

    def add_subscription(
        self,
        customer_id: str,
        status: str = "pending",
        plan: str = DEFAULT_PLAN,
        type: str = "consumption",
        metadata: dict[str, Any] | None = None,
        id: str | None = None,
        *,
        estimated_usage: float = 2500,
        zip_code: str = "10115",
        lead_id: str | None = None,
        created_at: str | None = None,
    ) -> dict[str, Any]:
        with self.lock:
            if customer_id not in self.customers:
                raise KeyError(f"unknown customer {customer_id!r}")
            data = shapes.subscription(
                id=id or shapes.new_id("sub"),
                customer_id=customer_id,
                plan=plan,
                status=status,
                type=type,
                metadata=metadata,
                estimated_usage=estimated_usage,
                zip_code=zip_code,
                created_at=created_at or self.now_iso(),
            )
            self.subscriptions[data["id"]] = data
            if self.unreadable_for > 0:
                self._readable_at[data["id"]] = time.monotonic() + self.unreadable_for
            if lead_id:
                self._subscription_leads[data["id"]] = lead_id
        return data

    def set_subscription_status(self, sub_id: str, status: str) -> dict[str, Any]:
        with self.lock:
            sub = self.subscriptions[sub_id]
            shapes.apply_status(sub, status, self.now_iso())
            return sub

    def is_readable(self, sub_id: str) -> bool:
        """False while a new subscription is inside its ``unreadable_for`` window."""
        with self.lock:
            readable_at = self._readable_at.get(sub_id)
            if readable_at is None:
                return sub_id in self.subscriptions
            if time.monotonic() >= readable_at:
                del self._readable_at[sub_id]
                return True
            return False

    def make_readable(self, sub_id: str | None = None) -> None:
        """End the unreadable window of one subscription, or of all of them."""
        with self.lock:
            if sub_id is None:
                self._readable_at.clear()
            else:
                self._readable_at.pop(sub_id, None)

    def subscription_view(self, sub_id: str) -> dict[str, Any]:
        """The subscription as ``GET /subscriptions/{id}`` returns it (customer embedded)."""
        with self.lock:
            return shapes.full_subscription(self.subscriptions[sub_id], self.customers)

    def create_lead(self, payload: dict[str, Any], base_url: str) -> dict[str, Any]:
        lead_id = shapes.new_id("lead")
        # As Nomos: the plan's hosted checkout with the lead's id (``?id=lead_...``).
        data = shapes.lead(
            id=lead_id,
            link=checkout_url(base_url, str(payload.get("plan") or DEFAULT_PLAN), id=lead_id),
            metadata=payload.get("metadata"),
            created_by=payload.get("created_by"),
            created_at=self.now_iso(),
        )
        with self.lock:
            self.leads[lead_id] = data
            self._lead_requests[lead_id] = payload
        return data

    def convert_lead(
        self, lead_id: str, status: str = "pending", type: str = "consumption"
    ) -> dict[str, Any]:
        """Finish the lead's checkout: a new customer and subscription.

        The lead's metadata stays on the lead: Nomos documents no copy onto the subscription,
        so the subscription is linked back through ``context.lead`` or ``GET /leads/{id}``.

        Returns the subscription as ``GET /subscriptions/{id}`` would. ``ValueError`` if the
        lead already converted, ``KeyError`` if it does not exist.
        """
        with self.lock:
            lead = self.leads[lead_id]
            if lead["subscription"]:
                raise ValueError(f"lead {lead_id} already converted")
            request = self._lead_requests.get(lead_id, {})
            person = request.get("customer") or {}
            cus = self.add_customer(
                email=person.get("email") or f"{lead_id}@example.com",
                first_name=person.get("first_name") or "Checkout",
                last_name=person.get("last_name") or "Customer",
                type=person.get("type") or "person",
                company_name=person.get("company_name"),
            )
            sub = self.add_subscription(
                cus["id"],
                status=status,
                plan=request.get("plan") or DEFAULT_PLAN,
                type=type,
                estimated_usage=(request.get("meter") or {}).get("estimated_usage", 2500),
                zip_code=(request.get("address") or {}).get("zip", "10115"),
                lead_id=lead_id,
            )
            lead["subscription"] = sub["id"]
            lead["subscribed_at"] = sub["created_at"]
            return self.subscription_view(sub["id"])

    def complete_checkout(
        self,
        plan: str,
        *,
        person: dict[str, str],
        zip_code: str,
        usage: float,
        metadata: dict[str, str],
        lead_id: str | None = None,
        token_hash: str | None = None,
    ) -> dict[str, Any]:
        """A submitted hosted checkout: the customer (new, the lead's, or the one a magic link
        named) gets a pending subscription whose metadata is exactly the ``metadata.<key>``
        parameters of the checkout URL; ``subscription.created`` is fired (with
        ``context.lead`` for a lead). Returns the stored subscription.

        ``ValueError`` when the lead already converted or the magic link is used up.
        """
        with self.lock:
            if lead_id:
                sub_id = self.convert_lead(lead_id)["id"]
                sub = self.subscriptions[sub_id]
                # What the checkout URL carried is persisted; the lead's own metadata is not
                # the checkout's business (API-NOTES, "Hosted checkout and leads").
                sub["metadata"] = dict(metadata) or sub.get("metadata")
                sub["estimated_usage"] = usage
                sub["address"]["zip"] = sub["billing_address"]["zip"] = zip_code
                customer = self.customers[sub["customer"]]
                customer.update({k: v for k, v in person.items() if v})
            else:
                if token_hash:
                    entry = self._magic_links.get(token_hash)
                    if self.checkout_customer(token_hash) is None or entry is None:
                        raise ValueError("this checkout link has been used or has expired")
                    entry["used"] = True
                    customer_id = entry["customer_id"]
                else:
                    customer_id = self.add_customer(
                        email=person.get("email") or "checkout@example.com",
                        first_name=person.get("first_name") or "Checkout",
                        last_name=person.get("last_name") or "Customer",
                    )["id"]
                sub = self.add_subscription(
                    customer_id,
                    plan=plan,
                    metadata=dict(metadata) or None,
                    estimated_usage=usage,
                    zip_code=zip_code,
                )
            self.announce("subscription.created", {"subscription": sub["id"]})
            return sub
