"""The fixtures a site developer gets from the installed package's pytest plugin."""

from __future__ import annotations

import pytest

from nomos_billing.client import get_client
from nomos_billing.conf import nomos_settings

pytestmark = pytest.mark.django_db(databases=[])


def test_nomos_sandbox_settings_points_the_client_at_a_live_sandbox(nomos_sandbox_settings):
    assert nomos_settings.API_BASE_URL == nomos_sandbox_settings.base_url
    link = get_client().create_magic_link("cus_sandbox_alice")
    assert link.startswith(nomos_sandbox_settings.portal_origin + "/auth/confirm?")
    assert nomos_sandbox_settings.count("POST /admin/magic_link") == 1


@pytest.fixture
def site_with_a_task_queue(settings):
    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TASK_BACKEND": "default"}


@pytest.mark.django_db
def test_webhooks_are_processed_in_the_request_even_when_the_site_queues_them(
    site_with_a_task_queue, settings, nomos_sandbox_settings
):
    # A site with the task-queue settings in place (docs: Process webhooks on a task worker);
    # the fixture comes after them, as in a site's own tests.
    from django.test import Client

    from nomos_billing.models import NomosSubscription, WebhookEvent
    from nomos_billing.testing import make_event, post_event

    response = post_event(Client(), make_event("subscription.activated",
                                               {"subscription": "sub_sandbox_alice"}))
    assert response.status_code == 200
    assert WebhookEvent.objects.get().status == "processed"
    assert NomosSubscription.objects.get(subscription_id="sub_sandbox_alice").status == "active"
    assert settings.TASKS and settings.NOMOS_BILLING["TASK_BACKEND"] is None
