"""Lead first: a lead this site created for a user links the customer it converts into, by the
webhook's ``context.lead`` or, with every webhook lost, by ``nomos_sync`` asking
``GET /leads/{id}``. The sandbox copies nothing from the lead onto the subscription (as Nomos),
so neither path can lean on metadata."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from nomos_billing.models import NomosCustomer, NomosLead, NomosSubscription
from nomos_billing.portal import get_customer, mint_portal_link
from nomos_billing.testing import post_event

pytestmark = pytest.mark.django_db

PLAN = "pln_sandbox_home"


@pytest.fixture
def converted(nomos: Any, bob: Any, settings: Any) -> dict[str, Any]:
    """Bob fills in the lead form (a real POST /leads), then finishes the sandbox checkout."""
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "PLAN_ID": PLAN}
    client = Client()
    client.force_login(bob)
    response = client.post("/nomos/portal/start/", {"zip_code": "10115", "estimated_usage": "2500"})
    assert response.status_code == 303
    lead_id = NomosLead.objects.get(user=bob).lead_id
    subscription = nomos.convert_lead(lead_id)
    # Nothing of the lead (its metadata carries our signed reference) reached the subscription.
    assert not subscription["metadata"]
    assert nomos.leads[lead_id]["metadata"]
    nomos.reset_counts()
    return {"lead_id": lead_id, "subscription": subscription}


def sync() -> str:
    out = StringIO()
    call_command("nomos_sync", stdout=out, stderr=StringIO())
    return out.getvalue()


def test_webhook_links_the_leads_customer_by_lead(nomos, bob, converted):
    event = nomos.build_event(
        "subscription.created", {"subscription": converted["subscription"]["id"]}
    )
    assert event["context"]["lead"] == converted["lead_id"]
    assert post_event(Client(), event).status_code == 200
    customer = NomosCustomer.objects.get(customer_id=converted["subscription"]["customer"]["id"])
    assert (customer.user, customer.linked_by) == (bob, "by_lead")


def test_nomos_sync_alone_links_the_leads_customer_when_every_webhook_was_lost(
    nomos, bob, converted
):
    out = sync()

    customer = NomosCustomer.objects.get(customer_id=converted["subscription"]["customer"]["id"])
    assert (customer.user, customer.linked_by) == (bob, "by_lead")
    sub = NomosSubscription.objects.get(subscription_id=converted["subscription"]["id"])
    assert sub.lead_id == converted["lead_id"]
    assert nomos.count("GET /leads/{id}") == 1
    assert "1 of 1 open lead converted" in out
    assert "1 customer linked" in out


def test_nomos_sync_asks_again_only_for_leads_still_open(nomos, bob, converted):
    sync()
    assert nomos.count("GET /leads/{id}") == 1
    nomos.reset_counts()
    sync()
    assert nomos.count("GET /leads/{id}") == 0


def test_nomos_sync_stores_a_converted_leads_subscription_it_did_not_list(nomos, bob, converted):
    # The list walk misses it (not readable yet when listed); the lead still names it.
    sub_id = converted["subscription"]["id"]
    NomosSubscription.objects.filter(subscription_id=sub_id).delete()
    from nomos_billing.leads import check_open_leads

    assert check_open_leads() == (1, 1, 1)
    customer = NomosCustomer.objects.get(subscriptions__subscription_id=sub_id)
    assert (customer.user, customer.linked_by) == (bob, "by_lead")


def test_open_lead_that_did_not_convert_links_nothing(nomos, bob, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "PLAN_ID": PLAN}
    client = Client()
    client.force_login(bob)
    client.post("/nomos/portal/start/", {"zip_code": "10115", "estimated_usage": "2500"})
    out = sync()
    assert "0 of 1 open lead converted" in out
    assert not NomosCustomer.objects.filter(user=bob).exists()


# -- the first click after the checkout, before its webhook ---------------------------------


def click(user: Any) -> Any:
    client = Client()
    client.force_login(user)
    return client.get("/nomos/portal/")


def test_first_click_after_the_checkout_links_by_lead_and_opens_the_portal(
    nomos, bob, converted
):
    response = click(bob)

    assert response.status_code == 302
    assert response["Location"].startswith(nomos.portal_origin + "/auth/confirm?")
    customer = NomosCustomer.objects.get(customer_id=converted["subscription"]["customer"]["id"])
    assert (customer.user, customer.linked_by) == (bob, "by_lead")
    assert nomos.count("GET /leads/{id}") == 1
    assert nomos.count("POST /admin/magic_link") == 1
    # Linked now: the next click asks Nomos about no lead.
    nomos.reset_counts()
    assert click(bob).status_code == 302
    assert nomos.count("GET /leads/{id}") == 0


def test_a_checkout_not_finished_yet_shows_the_not_linked_page(nomos, bob, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "PLAN_ID": PLAN}
    client = Client()
    client.force_login(bob)
    form = {"zip_code": "10115", "estimated_usage": "2500"}
    assert client.post("/nomos/portal/start/", form).status_code == 303
    nomos.reset_counts()

    response = client.get("/nomos/portal/")

    assert response.status_code == 200
    assert nomos.count("GET /leads/{id}") == 1
    assert nomos.count("POST /admin/magic_link") == 0
    assert not NomosCustomer.objects.filter(user=bob).exists()


def test_a_lead_older_than_a_day_is_left_to_the_webhook_and_nomos_sync(nomos, bob, converted):
    NomosLead.objects.filter(user=bob).update(created_at=timezone.now() - timedelta(days=2))

    response = click(bob)

    assert response.status_code == 200  # the not-linked page
    assert nomos.calls == {}
    assert not NomosCustomer.objects.filter(user=bob).exists()


def test_another_users_converted_lead_links_nobody_on_my_click(
    nomos, bob, converted, django_user_model
):
    carol = django_user_model.objects.create_user("carol", "carol@example.com", "pw")

    response = click(carol)

    assert response.status_code == 200
    assert nomos.calls == {}
    assert not NomosCustomer.objects.exclude(user=None).exists()


def test_nomos_down_during_that_first_click_shows_the_unavailable_page(nomos, bob, converted):
    from nomos_billing.sandbox import Fault

    nomos.add_fault("GET /leads/{id}", Fault(status=503), times=None)

    response = click(bob)

    assert response.status_code == 503
    assert not NomosCustomer.objects.exclude(user=None).exists()


def test_a_click_asks_about_the_three_newest_open_leads_only(nomos, bob, converted):
    # Bob sent the sign-up form four more times without finishing; the checkout he did finish
    # is now the oldest of five open leads: the click asks about three, the webhook does the rest.
    for n in range(4):
        NomosLead.objects.create(lead_id=f"lead_unfinished_{n}", user=bob)
    NomosLead.objects.filter(lead_id=converted["lead_id"]).update(
        created_at=timezone.now() - timedelta(hours=1)
    )

    response = click(bob)

    assert response.status_code == 200  # not linked yet
    assert nomos.count("GET /leads/{id}") == 3
    asked = [e["path"] for e in nomos.request_log if e["key"] == "GET /leads/{id}"]
    assert all("lead_unfinished_" in path for path in asked)


def test_nomos_sync_skips_a_lead_nomos_does_not_know_and_links_the_rest(nomos, bob, converted):
    NomosLead.objects.create(lead_id="lead_gone_at_nomos", user=bob)

    out = sync()

    customer = NomosCustomer.objects.get(customer_id=converted["subscription"]["customer"]["id"])
    assert (customer.user, customer.linked_by) == (bob, "by_lead")
    assert nomos.count("GET /leads/{id}") == 2
    assert "1 of 2 open leads converted" in out


def test_a_user_object_that_already_looked_for_its_customer_is_linked_too(
    nomos, bob, converted, django_user_model
):
    # A site view that asked get_customer() first (Django then remembers "no customer" on the
    # object) and then mints: the link made by the lead is seen all the same.
    user = django_user_model.objects.get(pk=bob.pk)
    assert get_customer(user) is None

    assert mint_portal_link(user).startswith(nomos.portal_origin + "/auth/confirm?")
    assert get_customer(user).customer_id == converted["subscription"]["customer"]["id"]
