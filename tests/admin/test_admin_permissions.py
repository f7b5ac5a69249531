"""Guard: every admin page and action, as every operator of ``tests.admin_roles``.

The linking actions have their own table (test_admin_linking.py). Here: each model's list and
change page, the change form's POST (it changes nothing for anyone: the admin mirrors Nomos),
Add and Delete, the health page, and the actions "Refresh from Nomos" and "Process again"
(``permissions=["change"]``) and deleting events (``delete_webhookevent``). A row that is
refused also leaves the database, Nomos and the admin history untouched.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import models
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from nomos_billing.models import (
    NomosCustomer,
    NomosLead,
    NomosLinkClaim,
    NomosSubscription,
    WebhookEvent,
)
from nomos_billing.sandbox import seed
from tests.admin_roles import ROLES, operator_client, refused

pytestmark = pytest.mark.django_db

VIEWERS = {"superuser", "staff-view", "staff-change", "staff-link"}
CHANGERS = {"superuser", "staff-change"}


@pytest.fixture(params=ROLES.keys())
def role(request: Any, django_user_model: Any) -> tuple[str, Client, Any]:
    return request.param, *operator_client(django_user_model, request.param)


@pytest.fixture
def rows(django_user_model: Any) -> dict[str, Any]:
    """One row of each model; the customer is the sandbox's Alice, so a refresh reaches Nomos."""
    user = django_user_model.objects.create_user("someone", "someone@example.com", "pw")
    customer = NomosCustomer.objects.create(customer_id=seed.ALICE, email="old@example.com")
    held = NomosCustomer.objects.create(customer_id="cus_held", email="held@example.com")
    return {
        "nomoscustomer": customer,
        "nomossubscription": NomosSubscription.objects.create(
            subscription_id="sub_perm", customer=customer, status="active"
        ),
        "nomoslead": NomosLead.objects.create(lead_id="lead_perm", user=user),
        "webhookevent": WebhookEvent.objects.create(
            event_id="evt_perm",
            topic="invoice.paid",
            payload={"id": "evt_perm", "topic": "invoice.paid"},
            status="failed",
            attempts=1,
            last_error="earlier",
        ),
        "nomoslinkclaim": NomosLinkClaim.objects.create(customer=held, user=user, rule="by_lead"),
    }


def snapshot(obj: Any) -> dict[str, Any]:
    # updated_at: the (empty) save of a change form may touch it; nothing else.
    row = type(obj).objects.filter(pk=obj.pk).values().first()
    row.pop("updated_at", None)
    return row


def url(name: str, *args: Any) -> str:
    return reverse(f"admin:nomos_billing_{name}", args=args)


@pytest.mark.parametrize("model", ["nomoscustomer", "nomossubscription", "nomoslead",
                                   "webhookevent", "nomoslinkclaim"])
def test_list_and_change_pages(role, rows, model):
    name, client, _ = role
    obj = rows[model]
    pages = [client.get(url(f"{model}_changelist")), client.get(url(f"{model}_change", obj.pk))]
    for response in pages:
        if name in VIEWERS:
            assert response.status_code == 200, (name, model)
            assert str(getattr(obj, obj._meta.pk.name)) in response.content.decode() or (
                model == "nomoslinkclaim")
        else:
            refused(name, response)


def edited_form(obj: Any, other_user: Any) -> dict[str, Any]:
    """A complete change-form POST (as the admin's widgets name the fields) in which every
    text field and every user is changed: what an editable form would save."""
    data: dict[str, Any] = {}
    for field in obj._meta.concrete_fields:
        if field.primary_key:
            continue
        value = getattr(obj, field.attname)
        if field.is_relation:
            value = other_user.pk if field.related_model is type(other_user) else value
            data[field.name] = "" if value is None else str(value)
        elif isinstance(field, models.DateTimeField):
            stamp = value or timezone.now()
            data[f"{field.name}_0"] = stamp.date().isoformat()
            data[f"{field.name}_1"] = stamp.time().isoformat(timespec="seconds")
        elif isinstance(field, models.JSONField):
            data[field.name] = json.dumps({"edited": True})
        elif isinstance(field, models.BooleanField):
            if not value:
                data[field.name] = "on"
        elif isinstance(field, models.EmailField):
            data[field.name] = "edited@example.com"
        elif isinstance(field, models.CharField) and not field.choices:
            data[field.name] = "edited"
        else:
            data[field.name] = "" if value is None else str(value)
    # The customer's inline of subscriptions, with its own rows unchanged.
    for related in obj._meta.related_objects:
        prefix = related.get_accessor_name()
        data.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0",
                     f"{prefix}-MIN_NUM_FORMS": "0", f"{prefix}-MAX_NUM_FORMS": "1000"})
    return data


@pytest.mark.parametrize("model", ["nomoscustomer", "nomossubscription", "nomoslead",
                                   "webhookevent", "nomoslinkclaim"])
def test_a_change_form_post_changes_nothing(role, rows, model, django_user_model):
    name, client, _ = role
    obj = rows[model]
    other = django_user_model.objects.create_user("other", "other@example.com", "pw")
    before = snapshot(obj)
    response = client.post(url(f"{model}_change", obj.pk), edited_form(obj, other))
    assert snapshot(obj) == before
    if name not in CHANGERS:
        refused(name, response)


@pytest.mark.parametrize("model", ["nomoscustomer", "nomossubscription", "nomoslead",
                                   "webhookevent", "nomoslinkclaim"])
def test_nobody_adds_and_only_event_deleters_delete(role, rows, model):
    name, client, _ = role
    obj = rows[model]
    add = client.get(url(f"{model}_add"))
    delete = client.post(url(f"{model}_delete", obj.pk), {"post": "yes"})
    # Add is refused to everyone, superusers too: the admin mirrors Nomos.
    refused(name, add)
    exists = type(obj).objects.filter(pk=obj.pk).exists()
    if model == "webhookevent" and name == "superuser":
        assert delete.status_code == 302 and not exists
    else:
        refused(name, delete)
        assert exists


def test_deleting_events_in_bulk(role, rows):
    name, client, _ = role
    event = rows["webhookevent"]
    client.post(url("webhookevent_changelist"),
                {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"})
    assert WebhookEvent.objects.filter(pk=event.pk).exists() is (name != "superuser")


def test_the_health_page(role):
    name, client, _ = role
    response = client.get(reverse("admin:nomos_billing_health"))
    if name in VIEWERS:
        assert response.status_code == 200
        assert b"Nomos health" in response.content
    else:
        refused(name, response)


def test_refresh_from_nomos(role, rows, nomos):
    name, client, _ = role
    customer = rows["nomoscustomer"]
    response = client.post(url("nomoscustomer_changelist"),
                           {"action": "refresh_from_nomos", "_selected_action": [customer.pk]})
    customer.refresh_from_db()
    if name in CHANGERS:
        assert response.status_code == 302
        assert nomos.count("GET /customers/{id}") == 1
        assert customer.email == "alice@example.com"
    else:
        assert nomos.count("GET /customers/{id}") == 0
        assert customer.email == "old@example.com"
        if name not in VIEWERS:
            refused(name, response)


def test_process_again(role, rows):
    name, client, _ = role
    event = rows["webhookevent"]
    before = timezone.now()
    response = client.post(url("webhookevent_changelist"),
                           {"action": "process_again", "_selected_action": [event.pk]})
    event.refresh_from_db()
    if name in CHANGERS:
        assert response.status_code == 302
        assert (event.status, event.attempts, event.last_error) == ("processed", 2, "")
        assert event.processed_at >= before
    else:
        assert (event.status, event.attempts, event.last_error) == ("failed", 1, "earlier")
        if name not in VIEWERS:
            refused(name, response)


def test_the_action_menus(role, rows):
    name, client, _ = role
    menus = {
        "nomoscustomer": client.get(url("nomoscustomer_changelist")),
        "webhookevent": client.get(url("webhookevent_changelist")),
    }
    if name not in VIEWERS:
        for response in menus.values():
            refused(name, response)
        return
    customers = menus["nomoscustomer"].content.decode()
    events = menus["webhookevent"].content.decode()
    assert ('value="refresh_from_nomos"' in customers) is (name in CHANGERS)
    assert ('value="process_again"' in events) is (name in CHANGERS)
    assert ('value="delete_selected"' in events) is (name == "superuser")


def test_a_subscription_search_by_the_customers_address(admin_client, rows):
    other = NomosCustomer.objects.create(customer_id="cus_other", email="other@example.com")
    NomosSubscription.objects.create(subscription_id="sub_other", customer=other, status="active")
    response = admin_client.get(url("nomossubscription_changelist"), {"q": "other@example.com"})
    text = response.content.decode()
    assert "sub_other" in text and "sub_perm" not in text
