"""The admin's bulk actions and operator pages: partial progress with a trail, the health page's
links and queue depth, and breadcrumbs in the markup the running Django styles."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

import django
import pytest
from django.contrib.admin.models import LogEntry
from django.utils import timezone

from nomos_billing import health, tasks
from nomos_billing.deliveries import record_event
from nomos_billing.models import NomosCustomer, WebhookEvent
from nomos_billing.sandbox import seed
from nomos_billing.testing import make_event

pytestmark = pytest.mark.django_db

CUSTOMERS = "/admin/nomos_billing/nomoscustomer/"
EVENTS = "/admin/nomos_billing/webhookevent/"
HEALTH = EVENTS + "health/"


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# -- Refresh from Nomos -----------------------------------------------------------------------


def test_refresh_goes_on_past_an_error_and_reports_both_counts(nomos, admin_client, admin_user):
    gone = NomosCustomer.objects.create(customer_id="cus_gone_at_nomos")  # 404 at the sandbox
    alice = NomosCustomer.objects.create(customer_id=seed.ALICE, email="stale@example.com")
    acme = NomosCustomer.objects.create(customer_id=seed.ACME, email="stale@example.com")

    response = admin_client.post(
        CUSTOMERS,
        {"action": "refresh_from_nomos", "_selected_action": [gone.pk, alice.pk, acme.pk]},
        follow=True,
    )

    shown = messages_of(response)
    assert "Refreshed 2 customers from Nomos." in shown
    [failure] = [m for m in shown if m.startswith("Refreshing")]
    assert failure.startswith("Refreshing 1 customer failed: cus_gone_at_nomos: ")
    alice.refresh_from_db()
    acme.refresh_from_db()
    assert alice.email == "alice@example.com"
    assert acme.email != "stale@example.com"
    trail = LogEntry.objects.filter(user=admin_user)
    assert sorted(trail.values_list("object_id", flat=True)) == sorted([str(alice.pk),
                                                                        str(acme.pk)])
    assert {e.change_message for e in trail} == {"Refreshed from Nomos by an admin."}


def test_refresh_quotes_a_few_errors_and_counts_the_rest(nomos, admin_client):
    gone = [NomosCustomer.objects.create(customer_id=f"cus_gone_{n}") for n in range(5)]

    response = admin_client.post(
        CUSTOMERS,
        {"action": "refresh_from_nomos", "_selected_action": [c.pk for c in gone]},
        follow=True,
    )

    [failure] = messages_of(response)
    assert failure.startswith("Refreshing 5 customers failed: ")
    assert failure.count(": GET /customers/cus_gone_") == 3 and failure.endswith("; …")
    assert not LogEntry.objects.exists()


# -- Process again ----------------------------------------------------------------------------


def test_process_again_leaves_a_log_entry_per_event(nomos, admin_client, admin_user):
    event, _ = record_event(make_event("subscription.updated",
                                       {"subscription": seed.ALICE_SUBSCRIPTION}))
    WebhookEvent.objects.filter(pk=event.pk).update(status="failed")

    admin_client.post(EVENTS, {"action": "process_again", "_selected_action": [event.pk]})

    [entry] = LogEntry.objects.filter(user=admin_user)
    assert (entry.object_id, entry.change_message) == (
        str(event.pk), "Processed again by an admin: done.")


def test_process_again_with_a_task_backend_enqueues_and_logs(nomos, admin_client, admin_user,
                                                              settings):
    pytest.importorskip("django_tasks_db", reason="django-tasks-db is not installed")
    if not tasks.framework_available():
        pytest.skip("no tasks framework installed")
    from django_tasks_db.models import DBTaskResult

    settings.TASKS = {"nomos": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "nomos"}
    event, _ = record_event(make_event("subscription.updated",
                                       {"subscription": seed.ALICE_SUBSCRIPTION}))

    response = admin_client.post(EVENTS, {"action": "process_again",
                                          "_selected_action": [event.pk]}, follow=True)

    assert "1 queued, 0 refused" in " ".join(messages_of(response))
    assert DBTaskResult.objects.count() == 1
    assert nomos.count("GET /subscriptions/{id}") == 0  # the request did not process it
    [entry] = LogEntry.objects.filter(user=admin_user)
    assert entry.change_message == "Queued again for the task worker by an admin."


# -- the health page --------------------------------------------------------------------------


@pytest.mark.usefixtures("no_takeover_look")
def test_the_stuck_count_links_to_the_stuck_events_only(nomos, admin_client):
    old = timezone.now() - timedelta(hours=1)
    WebhookEvent.objects.create(event_id="evt_stuck", topic="test.event", status="processing",
                                claimed_at=old)
    WebhookEvent.objects.create(event_id="evt_busy", topic="test.event", status="processing",
                                claimed_at=timezone.now())

    page = admin_client.get(HEALTH).content.decode()
    [link] = re.findall(r'href="([^"]*)">1</a>', page)
    assert link == EVENTS + "?stuck=yes"

    listed = admin_client.get(link).content.decode()
    assert "evt_stuck" in listed and "evt_busy" not in listed


def test_queue_depth_counts_scheduled_retries_but_not_watchdogs(settings):
    pytest.importorskip("django_tasks_db", reason="django-tasks-db is not installed")
    if not tasks.framework_available():
        pytest.skip("no tasks framework installed")
    settings.TASKS = {"nomos": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "nomos"}

    tasks.enqueue("evt_now")
    tasks.enqueue("evt_retry", retry=1, delay=600)  # a retry after an outage, in 10 minutes
    tasks.enqueue("evt_claimed", takeover=True, delay=600)  # a claim's watchdog

    assert health.collect().queue_depth == 2


# -- breadcrumbs ------------------------------------------------------------------------------


def styled_breadcrumb_tags() -> set[str]:
    """The elements the running Django's admin CSS styles as breadcrumbs."""
    css = Path(django.__file__).parent / "contrib/admin/static/admin/css/base.css"
    return set(re.findall(r"^(\w+)\.breadcrumbs\s*\{", css.read_text(), re.M))


@pytest.mark.parametrize("page", ["link", "unlink", "health"])
def test_breadcrumbs_use_the_markup_this_django_styles(admin_client, django_user_model, page):
    owner = django_user_model.objects.create_user("owner")
    unlinked = NomosCustomer.objects.create(customer_id="cus_free")
    linked = NomosCustomer.objects.create(customer_id="cus_owned", user=owner)
    if page == "health":
        response = admin_client.get(HEALTH)
    else:
        chosen = unlinked if page == "link" else linked
        action = "link_to_user" if page == "link" else "unlink"
        response = admin_client.post(CUSTOMERS, {"action": action,
                                                 "_selected_action": [chosen.pk]})
    assert response.status_code == 200
    html = response.content.decode()

    [tag] = re.findall(r'<(\w+) class="breadcrumbs">', html)
    assert tag in styled_breadcrumb_tags()
    assert tag == ("ol" if django.VERSION >= (6, 0) else "div")
    crumbs = html.split('class="breadcrumbs">', 1)[1].split(f"</{tag}>", 1)[0]
    assert 'href="/admin/"' in crumbs and 'href="/admin/nomos_billing/"' in crumbs
    assert (CUSTOMERS in crumbs) == (page != "health")


@pytest.mark.redis
def test_rq_queue_depth_counts_scheduled_tasks(settings):
    pytest.importorskip("django_tasks_rq", reason="django-tasks-rq is not installed")
    if not os.environ.get("CACHE_URL"):
        # The RQ db follows CACHE_URL's; without it this run has no Redis db of its own to empty.
        pytest.skip("RQ needs Redis: runs on the PostgreSQL + Redis run (CACHE_URL)")
    import django_rq
    import redis

    try:
        django_rq.get_connection("default").ping()
    except redis.RedisError:
        pytest.skip(f"no Redis for RQ at {settings.RQ_QUEUES['default']['URL']} (CACHE_URL)")
    queue = django_rq.get_queue("default")
    queue.empty()
    for job_id in queue.scheduled_job_registry.get_job_ids():
        queue.scheduled_job_registry.remove(job_id, delete_job=True)
    settings.TASKS = {"nomos": {"BACKEND": "django_tasks_rq.RQBackend"}}
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "nomos"}
    try:
        tasks.enqueue("evt_now")
        tasks.enqueue("evt_retry", retry=1, delay=600)

        assert health.collect().queue_depth == 2
    finally:
        queue.empty()
        for job_id in queue.scheduled_job_registry.get_job_ids():
            queue.scheduled_job_registry.remove(job_id, delete_job=True)
