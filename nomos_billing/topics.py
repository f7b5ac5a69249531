"""The webhook topics Nomos documents.

The admin's topic filter offers them (no ``SELECT DISTINCT topic`` over the whole event log on
every page load), and ``nomos_trigger`` warns about a topic that is not among them (a typo
rehearses nothing). Nomos may add topics later: neither refuses another one.
"""

from __future__ import annotations

__all__ = ["TOPICS"]

TOPICS = (
    "subscription.created",
    "subscription.confirmed",
    "subscription.activated",
    "subscription.ended",
    "subscription.terminated",
    "invoice.created",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.voided",
    "invoice.uncollectible",
    "meter_order.created",
    "meter_order.placed",
    "meter_order.check_submitted",
    "meter_order.check_reviewed",
    "meter_order.scheduled",
    "meter_order.installed",
    "meter_order.activated",
    "meter_order.blocked",
    "meter_order.cancelled",
    "test.event",
)
