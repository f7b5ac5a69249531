"""Every sandbox fault on every Nomos call a request makes gets the user the 503 page and Nomos
a 503, within the budget: a hang, a 429 (with and without Retry-After) and a 5xx, on the token,
the magic link and the subscription fetch. Never a 500, never an event left in progress."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from nomos_billing.models import NomosCustomer, WebhookEvent
from nomos_billing.sandbox import Fault, seed
from nomos_billing.testing import make_event, post_event

FAULTS = {
    "hang": Fault(hang=5),
    "429": Fault(status=429),
    "429-retry-after": Fault(status=429, retry_after=30),
    "500": Fault(status=500),
    "503": Fault(status=503),
}

pytestmark = pytest.mark.django_db


@pytest.fixture
def short(settings: Any) -> None:
    # Budgets short enough that a hang costs this suite about a second per case.
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TIMEOUT": (0.5, 0.5),
                              "CLICK_BUDGET": 1, "WEBHOOK_BUDGET": 1}


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
@pytest.mark.parametrize("key", ["POST /oauth/token", "POST /admin/magic_link"])
def test_click_gets_the_503_page(key, fault, short, nomos, django_user_model):
    user = django_user_model.objects.create_user("alice", "alice@example.com", "pw")
    NomosCustomer.objects.create(user=user, customer_id=seed.ALICE, email="alice@example.com")
    client = Client()
    client.force_login(user)
    nomos.add_fault(key, FAULTS[fault], times=None)

    response = client.get("/nomos/portal/")

    assert response.status_code == 503
    assert [t.name for t in response.templates][0] == "nomos_billing/unavailable.html"
    assert int(response["Retry-After"]) >= 1


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
@pytest.mark.parametrize("key", ["POST /oauth/token", "GET /subscriptions/{id}"])
def test_webhook_gets_503_and_the_event_stays_failed_for_redelivery(key, fault, short, nomos,
                                                                    client):
    nomos.add_fault(key, FAULTS[fault], times=None)
    event = make_event("subscription.updated", {"subscription": seed.ALICE_SUBSCRIPTION})

    response = post_event(client, event)

    assert response.status_code == 503
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.claimed_at) == ("failed", None)
    nomos.clear_faults()
    assert post_event(client, event).status_code == 200
