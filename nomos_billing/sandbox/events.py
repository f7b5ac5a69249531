"""Events as Nomos fires them: recorded for ``GET /events/{id}``, forwarded or delivered signed."""

from __future__ import annotations

from typing import Any

from . import shapes
from .stores import SandboxStores
from .webhooks import deliver


class Events(SandboxStores):
    # -- events and webhooks --------------------------------------------------------------------

    def build_event(
        self, topic: str, context: dict[str, Any] | None = None, event_id: str | None = None
    ) -> dict[str, Any]:
        context = dict(context or {})
        # Nomos puts the lead on subscription.created when the checkout came from one.
        if topic == "subscription.created" and "lead" not in context:
            lead_id = self.lead_of(str(context.get("subscription", "")))
            if lead_id:
                context["lead"] = lead_id
        event = {
            "id": event_id or shapes.new_id("evt"),
            "timestamp": self.now_iso(),
            "topic": topic,
            "context": context,
        }
        with self.lock:
            self.events[str(event["id"])] = event
        return event

    def send_webhook(
        self,
        url: str,
        topic: str,
        *,
        secret: str | None = None,
        context: dict[str, Any] | None = None,
        event_id: str | None = None,
        timestamp: int | None = None,
        duplicate: int = 1,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """Deliver a signed event to ``url`` ``duplicate`` times; return its envelope.

        An ``event_id`` already in ``events`` is re-delivered unchanged (a retry). Each delivery's
        status (or connection error) is appended to ``webhook_deliveries``.
        """
        secret = secret if secret is not None else self.webhook_secret
        if not secret:
            raise ValueError("send_webhook needs a secret (or Sandbox(webhook_secret=...))")
        with self.lock:
            existing = self.events.get(event_id) if event_id else None
        event = existing or self.build_event(topic, context, event_id)
        deliveries = deliver(
            url, event, secret, timestamp=timestamp, times=duplicate, timeout=timeout
        )
        with self.lock:
            self.webhook_deliveries.extend(deliveries)
        return event

    def event_context(self, topic: str, subscription_id: str) -> dict[str, str]:
        """The ids an event of ``topic`` about ``subscription_id`` carries, as Nomos sends them:
        ``invoice.*`` and ``meter_order.*`` name their own object and the subscription."""
        family = topic.split(".", 1)[0]
        context = {"subscription": subscription_id}
        if family == "invoice":
            context["invoice"] = shapes.new_id("inv")
            if topic == "invoice.voided":
                # A voided invoice names the credit note that offsets it.
                context["voiding_invoice"] = shapes.new_id("inv")
        elif family == "meter_order":
            context["meter_order"] = shapes.new_id("prdo")
        elif family != "subscription":
            return {}
        return context

    def announce(self, topic: str, context: dict[str, Any]) -> dict[str, Any]:
        """Fire an event as Nomos does: recorded for ``GET /events/{id}`` and, when the
        sandbox forwards, delivered signed to every ``--forward-to`` URL (in the background)."""
        event = self.build_event(topic, context)
        if self.forwarder is not None:
            self.forwarder.submit(event)
        return event

    def lead_of(self, sub_id: str) -> str | None:
        return self._subscription_leads.get(sub_id)
