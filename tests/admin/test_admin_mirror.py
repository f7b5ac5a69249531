"""The admin mirrors Nomos: fields Nomos owns are read-only, nothing can be added, only events
can be deleted, and the user link changes only through the Link / Unlink actions (each with a
``LogEntry``, ``linked_by``, a log line and a signal). Driven as a superuser with Django's
test client; a non-staff user gets nothing."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.urls import reverse

from nomos_billing import signals
from nomos_billing.models import NomosCustomer, NomosLead, NomosSubscription, WebhookEvent

pytestmark = pytest.mark.django_db

CUSTOMERS = reverse("admin:nomos_billing_nomoscustomer_changelist")
MODELS = ["nomoscustomer", "nomossubscription", "nomoslead", "webhookevent"]


@pytest.fixture
def owner(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("owner", "owner@example.com", "pw")


@pytest.fixture
def intruder(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("intruder", "intruder@example.com", "pw")


@pytest.fixture
def linked(owner: Any) -> NomosCustomer:
    customer = NomosCustomer.objects.create(
        customer_id="cus_linked", email="real@example.com", first_name="Real", user=owner,
        linked_by="by_lead",
    )
    NomosSubscription.objects.create(customer=customer, subscription_id="sub_linked",
                                     status="active")
    return customer


@pytest.fixture
def signal_log(connect_receiver: Any) -> Any:
    seen: list[tuple[str, str, Any, str]] = []

    def on_linked(sender, customer, user, resolver, **kwargs):
        seen.append(("linked", customer.customer_id, user, resolver))

    def on_unlinked(sender, customer, user, unlinked_by, **kwargs):
        seen.append(("unlinked", customer.customer_id, user, unlinked_by))

    connect_receiver(signals.customer_linked, on_linked)
    connect_receiver(signals.customer_unlinked, on_unlinked)
    return seen


def change_url(obj: Any) -> str:
    return reverse(f"admin:nomos_billing_{obj._meta.model_name}_change", args=[obj.pk])


def test_change_form_post_with_another_user_leaves_the_link_unchanged(
    admin_client, linked, owner, intruder
):
    url = change_url(linked)
    response = admin_client.post(url, {
        "user": str(intruder.pk), "email": "evil@example.com", "first_name": "Evil",
        "customer_id": "cus_moved", "linked_by": "admin",
        "subscriptions-TOTAL_FORMS": "0", "subscriptions-INITIAL_FORMS": "0",
    })
    assert response.status_code in (200, 302, 403)
    linked.refresh_from_db()
    assert (linked.user, linked.linked_by, linked.customer_id) == (owner, "by_lead", "cus_linked")
    assert (linked.email, linked.first_name) == ("real@example.com", "Real")


def test_change_form_shows_nomos_fields_read_only_and_no_save(admin_client, linked):
    page = admin_client.get(change_url(linked)).content.decode()
    for name in ("user", "email", "first_name", "customer_id"):
        assert f'name="{name}"' not in page
    assert "real@example.com" in page
    assert 'name="_save"' not in page


@pytest.mark.parametrize("model", MODELS)
def test_no_add_page_answers_200(admin_client, model):
    assert admin_client.get(reverse(f"admin:nomos_billing_{model}_add")).status_code == 403


def test_delete_only_for_events(admin_client, linked, owner):
    lead = NomosLead.objects.create(lead_id="lead_x", user=owner)
    event = WebhookEvent.objects.create(event_id="evt_x", topic="invoice.paid", payload={})
    for obj in (linked, linked.subscriptions.get(), lead):
        url = reverse(f"admin:nomos_billing_{obj._meta.model_name}_delete", args=[obj.pk])
        assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert NomosCustomer.objects.filter(pk=linked.pk).exists()
    url = reverse("admin:nomos_billing_webhookevent_delete", args=[event.pk])
    assert admin_client.post(url, {"post": "yes"}).status_code == 302
    assert not WebhookEvent.objects.filter(pk=event.pk).exists()


def test_link_action_logs_an_entry_and_sends_the_signal(admin_client, admin_user, intruder,
                                                        signal_log):
    customer = NomosCustomer.objects.create(customer_id="cus_free")
    response = admin_client.post(CUSTOMERS, {
        "action": "link_to_user", "_selected_action": [customer.pk], "apply": "Link",
        "user": "intruder",
    })
    assert response.status_code == 302
    customer.refresh_from_db()
    assert (customer.user, customer.linked_by) == (intruder, "admin")
    entry = LogEntry.objects.get(object_id=str(customer.pk))
    assert (entry.user, entry.action_flag) == (admin_user, CHANGE)
    assert "Linked to user" in entry.get_change_message()
    assert signal_log == [("linked", "cus_free", intruder, "admin")]


def test_unlink_asks_for_confirmation_first(admin_client, linked, owner, signal_log):
    page = admin_client.post(CUSTOMERS, {"action": "unlink", "_selected_action": [linked.pk]})
    assert page.status_code == 200
    assert 'name="confirm"' in page.content.decode() and "cus_linked" in page.content.decode()
    linked.refresh_from_db()
    assert linked.user == owner and signal_log == [] and not LogEntry.objects.exists()


def test_unlink_action_logs_an_entry_and_sends_the_signal(admin_client, admin_user, linked,
                                                          owner, signal_log, caplog):
    response = admin_client.post(CUSTOMERS, {
        "action": "unlink", "_selected_action": [linked.pk], "confirm": "yes",
    }, follow=True)
    assert "Unlinked 1 customer" in response.content.decode()
    linked.refresh_from_db()
    assert (linked.user, linked.linked_by, linked.linked_at) == (None, "", None)
    entry = LogEntry.objects.get(object_id=str(linked.pk))
    assert (entry.user, entry.action_flag) == (admin_user, CHANGE)
    assert "Unlinked from user" in entry.get_change_message()
    assert signal_log == [("unlinked", "cus_linked", owner, "admin")]
    assert any("unlinked from user" in r.getMessage() for r in caplog.records)


def test_unlinked_customer_can_be_linked_again_by_the_action(admin_client, linked, intruder):
    admin_client.post(CUSTOMERS, {"action": "unlink", "_selected_action": [linked.pk],
                                  "confirm": "yes"})
    admin_client.post(CUSTOMERS, {"action": "link_to_user", "_selected_action": [linked.pk],
                                  "apply": "Link", "user": "intruder"})
    linked.refresh_from_db()
    assert (linked.user, linked.linked_by) == (intruder, "admin")


def test_non_staff_user_gets_nothing(client, intruder, linked, signal_log):
    client.force_login(intruder)
    for url in (CUSTOMERS, change_url(linked)):
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"]
    response = client.post(CUSTOMERS, {"action": "unlink", "_selected_action": [linked.pk],
                                       "confirm": "yes"})
    assert response.status_code == 302 and "/login/" in response["Location"]
    linked.refresh_from_db()
    assert linked.user is not None and signal_log == []


def test_unlink_confirmation_speaks_german(admin_client, linked):
    page = admin_client.post(CUSTOMERS, {"action": "unlink", "_selected_action": [linked.pk]},
                             headers={"accept-language": "de"})
    html = page.content.decode()
    assert "Ja, Verknüpfung aufheben" in html and "Bei Nomos ändert sich nichts." in html
    assert "cus_linked von owner" in html


def test_link_form_takes_no_lenient_digits_for_a_user_id(admin_client, intruder):
    customer = NomosCustomer.objects.create(customer_id="cus_free")
    arabic_indic = "".join(chr(0x0660 + int(d)) for d in str(intruder.pk))
    admin_client.post(CUSTOMERS, {"action": "link_to_user", "_selected_action": [customer.pk],
                                  "apply": "Link", "user": arabic_indic})
    customer.refresh_from_db()
    assert customer.user is None
