"""A subscription Nomos cannot read yet: ``subscription.created`` fires right after checkout, and
``GET /subscriptions/{id}`` may answer 404 for a while. Inside ``NOT_FOUND_RETRY_WINDOW`` the
webhook answers 503 (Nomos redelivers) and keeps the event ``failed``; once readable, the
redelivery processes and links; after the window the 404 is final (200, ``failed``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from nomos_billing.linking import user_reference
from nomos_billing.models import NomosCustomer, WebhookEvent
from nomos_billing.sandbox import Fault
from nomos_billing.testing import post_event

pytestmark = pytest.mark.django_db


@pytest.fixture
def fresh(nomos: Any, alice: Any) -> dict[str, Any]:
    """A checkout that just finished: a new customer and subscription (carrying alice's signed
    reference, as ``checkout_url(alice)`` leaves it), unreadable for an hour."""
    nomos.unreadable_for = 3600
    customer = nomos.add_customer("alice@example.com", "Alice", "New")
    sub = nomos.add_subscription(customer["id"], metadata={"django_user_id": user_reference(alice)})
    event = nomos.build_event("subscription.created", {"subscription": sub["id"]})
    return {"sub": sub, "customer": customer, "event": event}


def test_404_on_a_fresh_subscription_created_answers_503_and_keeps_the_event(
    client, nomos, fresh
):
    response = post_event(client, fresh["event"])

    assert response.status_code == 503
    event = WebhookEvent.objects.get(event_id=fresh["event"]["id"])
    assert event.status == WebhookEvent.Status.FAILED
    assert "NotReadableYet" in event.last_error
    assert not NomosCustomer.objects.filter(customer_id=fresh["customer"]["id"]).exists()
    assert nomos.count("GET /subscriptions/{id}") == 1


def test_redelivery_after_the_subscription_became_readable_processes_and_links(
    client, nomos, fresh, alice
):
    assert post_event(client, fresh["event"]).status_code == 503
    nomos.make_readable(fresh["sub"]["id"])

    response = post_event(client, fresh["event"])

    assert response.status_code == 200
    event = WebhookEvent.objects.get(event_id=fresh["event"]["id"])
    assert (event.status, event.attempts) == (WebhookEvent.Status.PROCESSED, 2)
    customer = NomosCustomer.objects.get(customer_id=fresh["customer"]["id"])
    assert (customer.user, customer.linked_by) == (alice, "by_metadata")


def test_past_the_window_a_404_is_final_200_and_failed(client, nomos, fresh):
    assert post_event(client, fresh["event"]).status_code == 503
    # The first delivery was received longer ago than the window (default 1 hour).
    WebhookEvent.objects.filter(event_id=fresh["event"]["id"]).update(
        received_at=timezone.now() - timedelta(hours=1, seconds=1)
    )

    response = post_event(client, fresh["event"])

    assert response.status_code == 200
    event = WebhookEvent.objects.get(event_id=fresh["event"]["id"])
    assert event.status == WebhookEvent.Status.FAILED
    assert "404" in event.last_error or "not found" in event.last_error.lower()


def test_window_is_a_setting_and_zero_turns_it_off(client, nomos, fresh, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "NOT_FOUND_RETRY_WINDOW": 0}
    response = post_event(client, fresh["event"])
    assert response.status_code == 200
    assert WebhookEvent.objects.get().status == WebhookEvent.Status.FAILED


def test_a_404_for_a_non_subscription_topic_is_not_retried(client, nomos):
    # Only subscription.* events fetch a subscription; others are acknowledged as before.
    nomos.add_fault("GET /subscriptions/{id}", Fault(status=404), times=None)
    response = post_event(client, nomos.build_event("invoice.created", {"subscription": "sub_x"}))
    assert response.status_code == 200
    assert nomos.count("GET /subscriptions/{id}") == 0
    assert WebhookEvent.objects.get().status == "processed"
