"""Guard: every path that waits on Nomos for someone stays inside its time budget.

Nomos hangs (3 s, well under the 10 s read timeout) on the one call each path makes; with
``CLICK_BUDGET`` / ``WEBHOOK_BUDGET`` at 0.5 s every path answers (503, or a failed event)
within about that, not after the hang: the portal button (GET and POST), the JSON endpoint, the
lead form, a webhook delivery, the admin's "Process again", ``nomos_replay`` and a task
worker. Measured on the real clock: the budget cuts real sockets on loopback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from nomos_billing import tasks
from nomos_billing.client import get_client
from nomos_billing.models import NomosCustomer, NomosLead, WebhookEvent
from nomos_billing.sandbox import Fault, seed
from nomos_billing.testing import make_event, post_event

pytestmark = pytest.mark.django_db

HANG = 3.0
BUDGET = 0.5
#: The budget, plus what a loaded machine needs around it; far below the hang.
WITHIN = BUDGET + 1.5
MAGIC_LINK = "POST /admin/magic_link"
LEADS = "POST /leads"
SUB_GET = "GET /subscriptions/{id}"


@pytest.fixture
def hanging(nomos: Any, settings: Any, django_user_model: Any) -> dict[str, Any]:
    settings.NOMOS_BILLING = {
        **settings.NOMOS_BILLING,
        "PLAN_ID": "pln_sandbox_home",
        "TIMEOUT": (1.0, 10.0),
        "CLICK_BUDGET": BUDGET,
        "WEBHOOK_BUDGET": BUDGET,
        "MAX_RETRIES": 0,
    }
    get_client().tokens.get()  # the token is there: only the path's own call hangs
    for key in (MAGIC_LINK, LEADS, SUB_GET):
        nomos.add_fault(key, Fault(hang=HANG), times=None)
    linked = django_user_model.objects.create_user("linked", "alice@example.com", "pw")
    NomosCustomer.objects.create(customer_id=seed.ALICE, email="alice@example.com", user=linked)
    newcomer = django_user_model.objects.create_user("new", "new@example.com", "pw")
    return {"linked": linked, "newcomer": newcomer}


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def stored_event() -> WebhookEvent:
    event = make_event("subscription.updated", {"subscription": seed.ALICE_SUBSCRIPTION})
    return WebhookEvent.objects.create(event_id=event["id"], topic=event["topic"],
                                       payload=event, status="failed", attempts=1)


def portal_get(users: dict[str, Any]) -> None:
    assert signed_in(users["linked"]).get("/nomos/portal/").status_code == 503


def portal_post(users: dict[str, Any]) -> None:
    assert signed_in(users["linked"]).post("/nomos/portal/").status_code == 503


def portal_link(users: dict[str, Any]) -> None:
    response = signed_in(users["linked"]).post("/nomos/portal/link/", "{}",
                                               content_type="application/json")
    assert response.status_code == 503 and response.json()["code"] == "unavailable"


def lead_form(users: dict[str, Any]) -> None:
    response = signed_in(users["newcomer"]).post(
        "/nomos/portal/start/", {"zip_code": "10115", "estimated_usage": "2500"})
    assert response.status_code == 503
    assert not NomosLead.objects.exists()


def webhook(users: dict[str, Any]) -> None:
    event = make_event("subscription.updated", {"subscription": seed.ALICE_SUBSCRIPTION})
    assert post_event(Client(), event).status_code == 503
    assert WebhookEvent.objects.get().status == "failed"


def process_again(users: dict[str, Any]) -> None:
    event = stored_event()
    admin = users["linked"]
    admin.is_staff = admin.is_superuser = True
    admin.save()
    signed_in(admin).post(reverse("admin:nomos_billing_webhookevent_changelist"),
                          {"action": "process_again", "_selected_action": [event.pk]})
    event.refresh_from_db()
    assert (event.status, event.attempts) == ("failed", 2)


def replay(users: dict[str, Any]) -> None:
    event = stored_event()
    with pytest.raises(CommandError, match="in time"):
        call_command("nomos_replay", event.event_id, stdout=StringIO(), stderr=StringIO())
    event.refresh_from_db()
    assert (event.status, event.attempts) == ("failed", 2)


def task_worker(users: dict[str, Any]) -> None:
    event = stored_event()
    assert tasks._run(event.event_id) == "failed"


PATHS: dict[str, Callable[[dict[str, Any]], None]] = {
    "portal GET": portal_get,
    "portal POST": portal_post,
    "portal/link": portal_link,
    "lead form": lead_form,
    "webhook": webhook,
    "admin Process again": process_again,
    "nomos_replay": replay,
    "task worker": task_worker,
}


@pytest.mark.parametrize("path", PATHS)
def test_a_hanging_nomos_is_cut_at_the_budget(path, hanging):
    started = time.monotonic()
    PATHS[path](hanging)
    assert time.monotonic() - started < WITHIN, path
