"""``nomos_prune_events`` and ``nomos_replay`` through ``call_command``: output, exit status
(``CommandError``), rows, and the requests the sandbox counted."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from nomos_billing.models import NomosSubscription, WebhookEvent
from nomos_billing.sandbox import Fault, seed
from nomos_billing.testing import make_event

pytestmark = pytest.mark.django_db


def run(name: str, *args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(name, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def fails(name: str, *args: str) -> str:
    with pytest.raises(CommandError) as info:
        run(name, *args)
    message = str(info.value)
    assert "\n" not in message
    assert "sandbox-secret" not in message and "whsec" not in message
    return message


def event_row(days_old: float = 0, status: str = "processed", topic: str = "invoice.paid",
              context: dict | None = None) -> WebhookEvent:
    payload = make_event(topic, context or {})
    event = WebhookEvent.objects.create(event_id=payload["id"], topic=topic, payload=payload,
                                        status=status, attempts=1)
    WebhookEvent.objects.filter(pk=event.pk).update(
        received_at=timezone.now() - timedelta(days=days_old))
    return event


# -- nomos_prune_events ------------------------------------------------------------------------


def test_prune_removes_events_older_than_retention_and_keeps_newer():
    old = [event_row(31), event_row(45, status="failed")]
    kept = [event_row(29), event_row(0)]
    out, _ = run("nomos_prune_events")
    assert "Deleted 2 webhook events" in out and "older than 30 days" in out
    assert set(WebhookEvent.objects.values_list("pk", flat=True)) == {e.pk for e in kept}
    assert not WebhookEvent.objects.filter(pk__in=[e.pk for e in old]).exists()


def test_prune_follows_the_setting_and_the_option(settings):
    event_row(8)
    event_row(3)
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "EVENT_RETENTION_DAYS": 7}
    assert "Deleted 1 " in run("nomos_prune_events")[0]
    assert "Deleted 1 " in run("nomos_prune_events", "--days", "2")[0]
    assert not WebhookEvent.objects.exists()


def test_prune_uses_the_current_time(monkeypatch):
    event = event_row(0)
    later = timezone.now() + timedelta(days=31)
    monkeypatch.setattr("nomos_billing.management.commands.nomos_prune_events.timezone.now",
                        lambda: later)
    run("nomos_prune_events")
    assert not WebhookEvent.objects.filter(pk=event.pk).exists()


def test_prune_dry_run_deletes_nothing():
    event_row(40)
    out, _ = run("nomos_prune_events", "--dry-run")
    assert "Would delete 1 " in out
    assert WebhookEvent.objects.count() == 1


@pytest.mark.parametrize("days", [0, -1, "30", None])
def test_prune_refuses_a_bad_retention(days, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "EVENT_RETENTION_DAYS": days}
    message = fails("nomos_prune_events")
    assert "EVENT_RETENTION_DAYS" in message


# -- nomos_replay ------------------------------------------------------------------------------


def test_replay_needs_ids_or_failed():
    assert "--failed" in fails("nomos_replay")


def test_replay_failed_processes_every_failed_event(nomos):
    failed = event_row(status="failed", topic="subscription.created",
                       context={"subscription": seed.ALICE_SUBSCRIPTION})
    other = event_row(status="failed", topic="invoice.paid")
    done = event_row(status="processed")
    out, _ = run("nomos_replay", "--failed")
    assert "Replayed 2 events: 2 processed, 0 ignored, 0 failed" in out
    for event in (failed, other):
        event.refresh_from_db()
        assert (event.status, event.attempts) == ("processed", 2)
    done.refresh_from_db()
    assert done.attempts == 1
    assert NomosSubscription.objects.filter(subscription_id=seed.ALICE_SUBSCRIPTION).exists()


def test_replay_failed_with_none_failed_says_so():
    assert "No failed events" in run("nomos_replay", "--failed")[0]


def test_replay_of_a_stored_processed_event_processes_it_again(nomos):
    event = event_row(status="processed", topic="subscription.activated",
                      context={"subscription": seed.ALICE_SUBSCRIPTION})
    out, _ = run("nomos_replay", event.event_id)
    assert f"{event.event_id} subscription.activated: processed" in out
    assert nomos.count("GET /subscriptions/{id}") == 1


def test_replay_of_an_unknown_id_fetches_the_event_from_nomos(nomos):
    remote = nomos.build_event("subscription.created",
                               {"subscription": seed.ALICE_SUBSCRIPTION})
    out, _ = run("nomos_replay", remote["id"])
    assert "fetched from Nomos and recorded" in out
    assert nomos.count("GET /events/{id}") == 1
    stored = WebhookEvent.objects.get(event_id=remote["id"])
    assert (stored.status, stored.payload, stored.secret_index) == ("processed", remote, None)
    assert NomosSubscription.objects.filter(subscription_id=seed.ALICE_SUBSCRIPTION).exists()


def test_replay_of_an_id_unknown_everywhere_exits_1(nomos):
    message = fails("nomos_replay", "evt_nowhere")
    assert "1 failed" in message
    assert not WebhookEvent.objects.exists()


def test_replay_with_nomos_down_is_one_line_error(settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "MAX_RETRIES": 0}  # port 9: refused
    message = fails("nomos_replay", "evt_unknown")
    assert message.startswith("evt_unknown: Nomos at http://127.0.0.1:9 is not reachable")


def test_replay_stops_when_nomos_fails_during_processing(nomos, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "MAX_RETRIES": 0}
    nomos.add_fault("GET /subscriptions/{id}", Fault(status=500), times=None)
    first = event_row(status="failed", topic="subscription.created",
                      context={"subscription": seed.ALICE_SUBSCRIPTION})
    event_row(status="failed", topic="subscription.created",
              context={"subscription": seed.ALICE_SUBSCRIPTION})
    message = fails("nomos_replay", "--failed")
    assert first.event_id in message and "stopped" in message and "HTTP 500" in message
    assert nomos.count("GET /subscriptions/{id}") == 1


def test_replay_reports_final_failures_and_goes_on(nomos):
    gone = event_row(status="failed", topic="subscription.created",
                     context={"subscription": "sub_gone"})
    fine = event_row(status="failed", topic="invoice.paid")
    with pytest.raises(CommandError, match="1 processed, 0 ignored, 1 failed"):
        call_command("nomos_replay", "--failed", stdout=StringIO(), stderr=StringIO())
    fine.refresh_from_db()
    gone.refresh_from_db()
    assert (fine.status, gone.status) == ("processed", "failed")
