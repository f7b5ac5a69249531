"""The admin: lists whose query count does not grow with rows, filters, search, actions, and
pages that never show a secret."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from nomos_billing import sync
from nomos_billing.models import NomosCustomer, NomosSubscription, WebhookEvent
from nomos_billing.sandbox import Fault, seed
from nomos_billing.testing import make_event

pytestmark = pytest.mark.django_db

CUSTOMERS = reverse("admin:nomos_billing_nomoscustomer_changelist")
SUBSCRIPTIONS = reverse("admin:nomos_billing_nomossubscription_changelist")
EVENTS = reverse("admin:nomos_billing_webhookevent_changelist")
SECRETS = ["whsec_test_new", "whsec_test_old", "sandbox-secret"]


def make_rows(n: int, django_user_model, start: int = 0) -> None:
    """``n`` customers (every other one linked), two subscriptions each, ``n`` events."""
    numbers = range(start, start + n)
    users = django_user_model.objects.bulk_create(
        [django_user_model(username=f"user{i}", email=f"user{i}@example.com")
         for i in numbers]
    )
    customers = NomosCustomer.objects.bulk_create(
        [NomosCustomer(customer_id=f"cus_{i}", email=f"c{i}@example.com",
                       user=users[k] if i % 2 else None) for k, i in enumerate(numbers)]
    )
    NomosSubscription.objects.bulk_create(
        [NomosSubscription(customer=c, subscription_id=f"sub_{c.customer_id}_{j}",
                           status=["pending", "active", "ended"][(i + j) % 3])
         for i, c in zip(numbers, customers, strict=True) for j in range(2)]
    )
    WebhookEvent.objects.bulk_create(
        [WebhookEvent(event_id=f"evt_{i}", topic="invoice.paid", payload={"id": f"evt_{i}"})
         for i in numbers]
    )


def count_queries(client, url: str) -> int:
    # A page shows up to 100 rows: 10 rows against 100 shown makes any per-row query visible.
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200
    return len(ctx)


@pytest.mark.usefixtures("no_takeover_look")
@pytest.mark.parametrize("url", [CUSTOMERS, SUBSCRIPTIONS, EVENTS])
def test_changelist_queries_do_not_grow_with_rows(url, admin_client, django_user_model):
    make_rows(10, django_user_model)
    small = count_queries(admin_client, url)
    make_rows(990, django_user_model, start=10)
    assert NomosCustomer.objects.count() == WebhookEvent.objects.count() == 1000
    large = count_queries(admin_client, url)
    assert small == large


PAGES = [
    (CUSTOMERS, {}), (CUSTOMERS, {"q": "cus_5"}), (CUSTOMERS, {"q": "c5@example.com"}),
    (CUSTOMERS, {"status": "active"}), (CUSTOMERS, {"linked": "no"}),
    (SUBSCRIPTIONS, {}), (SUBSCRIPTIONS, {"q": "sub_cus_5_0"}),
    (SUBSCRIPTIONS, {"status": "ended"}),
    (EVENTS, {}), (EVENTS, {"q": "evt_5"}), (EVENTS, {"status": "received"}),
    (EVENTS, {"topic": "invoice.paid"}),
]


def page_queries(client, url: str, query: dict[str, str]) -> list[str]:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, query)
    assert response.status_code == 200
    return [q["sql"] for q in ctx.captured_queries]


@pytest.mark.usefixtures("no_takeover_look")
def test_admin_pages_at_many_rows_use_indexable_queries_and_the_same_count(
    admin_client, django_user_model
):
    make_rows(10, django_user_model)
    small = [page_queries(admin_client, url, query) for url, query in PAGES]
    make_rows(990, django_user_model, start=10)
    WebhookEvent.objects.bulk_create(
        [WebhookEvent(event_id=f"evt_more_{i}", topic="subscription.created", status="processed")
         for i in range(4000)]
    )
    for (url, query), before in zip(PAGES, small, strict=True):
        large = page_queries(admin_client, url, query)
        assert len(large) == len(before), (url, query)
        for sql in large:
            # Substring search and DISTINCT (date_hierarchy, a topic filter over all values)
            # scan the whole table on every load.
            assert " LIKE " not in sql.upper() and "DISTINCT" not in sql.upper(), (query, sql)
        if url == CUSTOMERS:
            # The latest status is a column now, not a subquery per customer.
            assert not any(NomosSubscription._meta.db_table in sql for sql in large), query


def test_latest_status_follows_the_newest_subscription_through_sync(nomos):
    customer = nomos.add_customer("late@example.com")
    first = nomos.add_subscription(customer["id"], status="active")
    sync.upsert_from_subscription(nomos.subscription_view(first["id"]))
    assert NomosCustomer.objects.get(customer_id=customer["id"]).latest_status == "active"
    second = nomos.add_subscription(customer["id"], status="pending")
    sync.upsert_from_subscription(nomos.subscription_view(second["id"]))
    assert NomosCustomer.objects.get(customer_id=customer["id"]).latest_status == "pending"
    nomos.set_subscription_status(first["id"], "ended")  # not the newest: no change
    sync.upsert_from_subscription(nomos.subscription_view(first["id"]))
    assert NomosCustomer.objects.get(customer_id=customer["id"]).latest_status == "pending"


def test_event_topic_filter_offers_the_documented_topics(admin_client):
    WebhookEvent.objects.create(event_id="evt_1", topic="invoice.paid", payload={})
    content = admin_client.get(EVENTS).content.decode()
    for topic in ("subscription.created", "meter_order.cancelled", "test.event"):
        assert f"?topic={topic}" in content


def test_customer_list_shows_latest_status_and_linked(admin_client, django_user_model):
    user = django_user_model.objects.create(username="linked-user")
    customer = NomosCustomer.objects.create(customer_id="cus_a", user=user)
    NomosSubscription.objects.create(customer=customer, subscription_id="sub_old",
                                     status="ended", nomos_created_at="2025-01-01T00:00Z")
    NomosSubscription.objects.create(customer=customer, subscription_id="sub_new",
                                     status="active", nomos_created_at="2026-01-01T00:00Z")
    sync.refresh_latest_status(customer.pk)  # what sync does when it stores a subscription
    NomosCustomer.objects.create(customer_id="cus_b")
    response = admin_client.get(CUSTOMERS)
    content = response.content.decode()
    assert "cus_a" in content and "linked-user" in content and "Active" in content
    assert 'alt="True"' in content and 'alt="False"' in content


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"linked": "yes"}, {"cus_a"}),
        ({"linked": "no"}, {"cus_b", "cus_c"}),
        ({"status": "active"}, {"cus_a"}),
        ({"status": "none"}, {"cus_c"}),
        ({"status": "ended"}, {"cus_b"}),
        ({"q": "findme"}, {"cus_a"}),
        ({"q": "b@example.com"}, {"cus_b"}),
        ({"q": "cus_c"}, {"cus_c"}),
    ],
)
def test_customer_filters_and_search(query, expected, admin_client, django_user_model):
    user = django_user_model.objects.create(username="findme", email="u@example.com")
    a = NomosCustomer.objects.create(customer_id="cus_a", user=user)
    b = NomosCustomer.objects.create(customer_id="cus_b", email="b@example.com")
    NomosCustomer.objects.create(customer_id="cus_c")
    NomosSubscription.objects.create(customer=a, subscription_id="sub_a", status="active")
    NomosSubscription.objects.create(customer=b, subscription_id="sub_b", status="ended")
    for customer in (a, b):
        sync.refresh_latest_status(customer.pk)
    response = admin_client.get(CUSTOMERS, query)
    shown = {c.customer_id for c in response.context["cl"].result_list}
    assert shown == expected


@pytest.mark.parametrize(
    ("url", "term", "expected"),
    [
        (CUSTOMERS, "cus_one", {"cus_one"}),
        (SUBSCRIPTIONS, "sub_one", {"sub_one"}),
    ],
)
def test_an_id_typed_into_search_finds_that_id_alone(
    url, term, expected, admin_client, django_user_model
):
    # An id is looked up on its own column only: a user or an address that happens to read
    # like the id (a login name "cus_one", an address "sub_one" as Nomos sent it) is no match.
    named_like_it = django_user_model.objects.create(username="cus_one", email="x@example.com")
    one = NomosCustomer.objects.create(customer_id="cus_one")
    two = NomosCustomer.objects.create(customer_id="cus_two", email="sub_one", user=named_like_it)
    NomosSubscription.objects.create(customer=one, subscription_id="sub_one")
    NomosSubscription.objects.create(customer=two, subscription_id="sub_two")

    response = admin_client.get(url, {"q": term})

    shown = {getattr(row, "subscription_id", None) or row.customer_id
             for row in response.context["cl"].result_list}
    assert shown == expected


def test_a_customers_subscriptions_are_listed_but_never_added_on_its_page(admin_client):
    # Subscriptions come from Nomos only: the inline shows them and offers no empty row.
    customer = NomosCustomer.objects.create(customer_id="cus_inline")
    NomosSubscription.objects.create(customer=customer, subscription_id="sub_inline")

    page = admin_client.get(
        reverse("admin:nomos_billing_nomoscustomer_change", args=[customer.pk])
    ).content.decode()

    assert "sub_inline" in page
    assert 'id="subscriptions-empty"' not in page
    assert 'name="subscriptions-MAX_NUM_FORMS" value="0"' in page


def test_pages_render_without_secrets(nomos, admin_client, django_user_model, settings):
    make_rows(3, django_user_model)
    customer = NomosCustomer.objects.first()
    event = WebhookEvent.objects.create(
        event_id="evt_x", topic="subscription.created",
        payload={"id": "evt_x", "context": {"subscription": "<script>alert(1)</script>"}},
    )
    urls = [
        CUSTOMERS, SUBSCRIPTIONS, EVENTS,
        reverse("admin:nomos_billing_nomoscustomer_change", args=[customer.pk]),
        reverse("admin:nomos_billing_nomossubscription_change",
                args=[NomosSubscription.objects.first().pk]),
        reverse("admin:nomos_billing_webhookevent_change", args=[event.pk]),
        reverse("admin:nomos_billing_nomoslead_changelist"),
    ]
    for url in urls:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        content = response.content.decode()
        for secret in SECRETS:
            assert secret not in content, (url, secret)
    page = admin_client.get(urls[5]).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page
    assert '"context": {' in page.replace("&quot;", '"')


def test_refresh_from_nomos_updates_customer(nomos, admin_client):
    customer = NomosCustomer.objects.create(customer_id=seed.ALICE, email="stale@example.com")
    response = admin_client.post(CUSTOMERS, {"action": "refresh_from_nomos",
                                             "_selected_action": [customer.pk]}, follow=True)
    customer.refresh_from_db()
    assert customer.email == "alice@example.com"
    assert customer.subscriptions.get().subscription_id == seed.ALICE_SUBSCRIPTION
    assert "Refreshed 1 customer" in response.content.decode()


def test_refresh_from_nomos_reports_an_outage(nomos, admin_client, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "MAX_RETRIES": 0}
    nomos.add_fault("GET /customers/{id}", Fault(status=500), times=None)
    customer = NomosCustomer.objects.create(customer_id=seed.ALICE)
    response = admin_client.post(CUSTOMERS, {"action": "refresh_from_nomos",
                                             "_selected_action": [customer.pk]}, follow=True)
    assert "Refreshing 1 customer failed: cus_sandbox_alice: " in response.content.decode()


def _link(admin_client, customer, **extra):
    data = {"action": "link_to_user", "_selected_action": [customer.pk], **extra}
    return admin_client.post(CUSTOMERS, data, follow="apply" in extra)


def test_link_to_user_shows_a_form_then_links(admin_client, django_user_model):
    user = django_user_model.objects.create(username="target")
    customer = NomosCustomer.objects.create(customer_id="cus_u")
    form_page = _link(admin_client, customer)
    assert form_page.status_code == 200
    assert 'name="user"' in form_page.content.decode()
    response = _link(admin_client, customer, apply="Link", user="target")
    customer.refresh_from_db()
    assert (customer.user, customer.linked_by) == (user, "admin")
    assert "Linked cus_u to target" in response.content.decode()


def test_link_to_user_accepts_a_user_id(admin_client, django_user_model):
    user = django_user_model.objects.create(username="by-id")
    customer = NomosCustomer.objects.create(customer_id="cus_u")
    _link(admin_client, customer, apply="Link", user=str(user.pk))
    customer.refresh_from_db()
    assert customer.user == user


def test_link_to_user_takes_the_largest_id_the_user_table_holds(admin_client, django_user_model):
    # SQLite's integer key holds 64 bits (19 digits); contrib.auth's on PostgreSQL holds 32.
    largest = 2**63 - 1 if connection.vendor == "sqlite" else 2**31 - 1
    user = django_user_model.objects.create(pk=largest, username="far")
    customer = NomosCustomer.objects.create(customer_id="cus_far")
    _link(admin_client, customer, apply="Link", user=str(largest))
    customer.refresh_from_db()
    assert customer.user == user


# Numbers past a 64-bit key: the re-shown autocomplete looks them up too, and SQLite cannot
# bind them (OverflowError); the answer is the form's error, never a 500.
@pytest.mark.parametrize("value", ["nobody", "99999", "taken", "9223372036854775808",
                                   "9999999999999999999", "9" * 40])
def test_link_to_user_refuses_unknown_or_taken_users(value, admin_client, django_user_model):
    taken = django_user_model.objects.create(username="taken")
    NomosCustomer.objects.create(customer_id="cus_taken", user=taken)
    customer = NomosCustomer.objects.create(customer_id="cus_u")
    response = admin_client.post(CUSTOMERS, {"action": "link_to_user", "apply": "Link",
                                             "_selected_action": [customer.pk], "user": value})
    assert response.status_code == 200
    assert "errorlist" in response.content.decode()
    customer.refresh_from_db()
    assert customer.user is None


def test_link_to_user_needs_exactly_one_unlinked_customer(admin_client, django_user_model):
    owner = django_user_model.objects.create(username="owner")
    linked = NomosCustomer.objects.create(customer_id="cus_l", user=owner)
    response = _link(admin_client, linked)
    assert response.status_code == 302
    followed = admin_client.get(response["Location"])
    assert "Select exactly one unlinked customer" in followed.content.decode()


def test_process_again_reprocesses_failed_event(nomos, admin_client):
    payload = make_event("subscription.created", {"subscription": seed.ALICE_SUBSCRIPTION})
    event = WebhookEvent.objects.create(event_id=payload["id"], topic=payload["topic"],
                                        payload=payload, status="failed", attempts=1)
    response = admin_client.post(EVENTS, {"action": "process_again",
                                          "_selected_action": [event.pk]}, follow=True)
    event.refresh_from_db()
    assert (event.status, event.attempts) == ("processed", 2)
    assert "1 done, 0 failed" in response.content.decode()
    assert NomosSubscription.objects.filter(subscription_id=seed.ALICE_SUBSCRIPTION).exists()


def test_event_admin_cannot_add(admin_client):
    assert admin_client.get(reverse("admin:nomos_billing_webhookevent_add")).status_code == 403


def test_subscriptions_are_found_by_their_customers_id(admin_client):
    from datetime import timedelta

    from django.utils import timezone

    ours = NomosCustomer.objects.create(customer_id="cus_found")
    other = NomosCustomer.objects.create(customer_id="cus_other")
    for sub, customer in (("sub_found", ours), ("sub_other", other)):
        NomosSubscription.objects.create(subscription_id=sub, customer=customer,
                                         status="active", start_at=timezone.now() - timedelta(1))
    page = admin_client.get(SUBSCRIPTIONS, {"q": "cus_found"}).content.decode()
    assert "sub_found" in page and "sub_other" not in page


def test_the_stuck_filter_offers_the_link_the_health_page_uses(admin_client):
    page = admin_client.get(EVENTS).content.decode()
    assert 'href="?stuck=yes"' in page


def test_a_mirrored_row_offers_no_button_to_save(admin_client):
    customer = NomosCustomer.objects.create(customer_id="cus_mirror")
    page = admin_client.get(
        reverse("admin:nomos_billing_nomoscustomer_change", args=[customer.pk])
    ).content.decode()
    assert 'name="_save"' not in page
    assert 'name="_continue"' not in page
    assert 'name="_addanother"' not in page


def test_the_health_page_shows_the_failed_events_count(admin_client):
    for n in range(3):
        WebhookEvent.objects.create(event_id=f"evt_failed_{n}", topic="test.event",
                                    status="failed")
    page = admin_client.get(reverse("admin:nomos_billing_health")).content.decode()
    assert f'href="{EVENTS}?status__exact=failed">3</a>' in page


@pytest.mark.django_db
def test_the_linked_filter_offers_linked_and_unlinked(admin_client: Any) -> None:
    response = admin_client.get(reverse("admin:nomos_billing_nomoscustomer_changelist"))
    choices = re.findall(r'<a href="\?linked=(\w+)"[^>]*>([^<]+)</a>', response.content.decode())
    assert choices == [("yes", "Linked"), ("no", "Unlinked")]
