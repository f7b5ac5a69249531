"""The catch-up (``nomos_sync --since auto|ISO``): with every webhook lost, changes made at Nomos
reach our rows on the next walk; the watermark moves only after a complete, verified walk."""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from urllib.parse import parse_qs

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from nomos_billing import catchup
from nomos_billing.models import NomosSubscription, NomosSyncState, WebhookEvent
from nomos_billing.sandbox import Fault

pytestmark = pytest.mark.django_db

LIST = "GET /subscriptions"
HOURS_AGO = (datetime.now(dt_timezone.utc) - timedelta(hours=2)).strftime(
    "%Y-%m-%dT%H:%M:%S.000Z")


def sync(*args: str) -> str:
    out = io.StringIO()
    call_command("nomos_sync", *args, stdout=out)
    return out.getvalue()


def watermark() -> datetime | None:
    state = catchup.get_state()
    return state.watermark if state else None


def add_subscriptions(nomos, customers: int, per_customer: int) -> list[str]:
    """Subscriptions last changed two hours ago: older than any walk's overlap."""
    ids = []
    for n in range(customers):
        customer = nomos.add_customer(f"c{n}@example.com")
        for _ in range(per_customer):
            ids.append(nomos.add_subscription(customer["id"], status="pending",
                                              created_at=HOURS_AGO)["id"])
    return ids


def updated_since_asked(nomos) -> list[str]:
    """The ``filter[updated_at][gte]`` of every list call, in order."""
    found = []
    for exchange in nomos.request_log:
        if exchange.get("path") == "/subscriptions":
            query = parse_qs(exchange.get("query") or "")
            found.append((query.get("filter[updated_at][gte]") or [""])[0])
    return found


def test_all_webhooks_lost_1000_changes_land_on_the_next_catch_up(nomos):
    ids = add_subscriptions(nomos, customers=50, per_customer=20)
    first = sync("--since", "auto")
    assert "watermark now" in first
    mark = watermark()
    assert mark is not None
    assert NomosSubscription.objects.filter(subscription_id__in=ids, status="pending").count() \
        == 1000
    # At Nomos, every one of them changes; no webhook reaches us.
    for sub_id in ids:
        nomos.set_subscription_status(sub_id, "active")
    nomos.request_log.clear()
    nomos.reset_counts()
    second = sync("--since", "auto")
    assert NomosSubscription.objects.filter(subscription_id__in=ids, status="active").count() \
        == 1000
    assert not WebhookEvent.objects.exists()
    # The walk asked for changes since the watermark minus the overlap, and got only those:
    # the seed's subscriptions (created just now, within the overlap) and the 1,000.
    asked = set(updated_since_asked(nomos))
    assert len(asked) == 1
    assert datetime.fromisoformat(asked.pop().replace("Z", "+00:00")) == \
        mark - catchup.DEFAULT_OVERLAP
    recent = [s for s in nomos.subscriptions.values()
              if s["updated_at"] >= (mark - catchup.DEFAULT_OVERLAP).isoformat()[:19]]
    assert f"Synced {len(recent)} subscriptions" in second
    assert nomos.count(LIST) == -(-len(recent) // 100)  # pages of 100
    assert watermark() > mark


def test_a_sandbox_ignoring_the_filter_makes_the_walk_refuse_and_keeps_the_watermark(nomos):
    ids = add_subscriptions(nomos, customers=2, per_customer=3)
    sync("--since", "auto")
    mark = watermark()
    nomos.set_subscription_status(ids[0], "active")
    nomos.add_fault(LIST, Fault(ignore_filters=True), times=None)
    with pytest.raises(CommandError, match=r"(?i)filter"):
        sync("--since", "auto")
    assert watermark() == mark
    state = NomosSyncState.objects.get()
    assert "filter" in state.last_error.lower()
    # Nothing from the unfiltered page was stored: the old rows are untouched.
    assert NomosSubscription.objects.get(subscription_id=ids[0]).status == "pending"
    nomos.clear_faults()
    sync("--since", "auto")
    assert NomosSubscription.objects.get(subscription_id=ids[0]).status == "active"
    assert watermark() > mark
    assert NomosSyncState.objects.get().last_error == ""


def test_a_walk_that_crashes_midway_repeats_next_time(nomos):
    ids = add_subscriptions(nomos, customers=3, per_customer=50)
    sync("--since", "auto")
    mark = watermark()
    for sub_id in ids:
        nomos.set_subscription_status(sub_id, "active")
    # The second page fails for good (an outage): the walk stops after the first page.
    original = nomos.count(LIST)
    nomos.add_fault(LIST, Fault(), times=1)  # the first page is served normally
    nomos.add_fault(LIST, Fault(status=404), times=None)
    with pytest.raises(CommandError, match="stopped after 100 subscriptions"):
        sync("--since", "auto", "--page-size", "100")
    assert nomos.count(LIST) == original + 2
    assert watermark() == mark
    # The first page was stored (the same upsert as webhooks), the rest was not reached.
    active = NomosSubscription.objects.filter(subscription_id__in=ids, status="active").count()
    assert 90 <= active < 150
    nomos.clear_faults()
    sync("--since", "auto")
    assert NomosSubscription.objects.filter(subscription_id__in=ids, status="active").count() \
        == 150


def test_since_iso_walks_from_that_time_and_moves_the_watermark_only_without_a_gap(nomos):
    add_subscriptions(nomos, customers=1, per_customer=2)
    sync("--since", "auto")
    mark = watermark()
    later = (mark + timedelta(minutes=1)).isoformat()
    nomos.request_log.clear()
    out = sync("--since", later)
    assert updated_since_asked(nomos) == [later.replace("+00:00", "Z")] or \
        updated_since_asked(nomos)[0].startswith(later[:19])
    assert "watermark now" not in out
    assert watermark() == mark
    earlier = (mark - timedelta(hours=1)).isoformat()
    out = sync("--since", earlier)
    assert "watermark now" in out
    assert watermark() > mark


@pytest.mark.parametrize("args, message", [
    (["--since", "yesterday"], "ISO 8601"),
    (["--since", "2026-11-01T00:00:00"], "timezone"),
    (["--since", "auto", "--customer", "cus_x"], "--customer"),
    (["--overlap", "60"], "--since"),
    (["--since", "auto", "--overlap", "-1"], "0 or more"),
])
def test_bad_since_arguments_are_explained(nomos, args, message):
    with pytest.raises(CommandError, match=message):
        sync(*args)
    assert not NomosSyncState.objects.exists()


def test_dry_run_catch_up_stores_no_watermark(nomos):
    add_subscriptions(nomos, customers=1, per_customer=2)
    sync("--since", "auto", "--dry-run")
    assert not NomosSyncState.objects.exists()
    assert not NomosSubscription.objects.exists()


def test_catch_up_task_runs_the_command(nomos, settings):
    from nomos_billing import tasks

    if not tasks.framework_available():
        pytest.skip("no tasks framework installed")
    add_subscriptions(nomos, customers=1, per_customer=2)
    summary = tasks.catch_up.call()
    assert summary.startswith("Synced")
    assert watermark() is not None
    assert timezone.now() - watermark() < timedelta(minutes=5)


@pytest.mark.django_db
@pytest.mark.parametrize(("watermark", "since", "moves"), [
    (None, None, True),           # the first walk, over everything
    (None, "2026-05-01", True),   # the first walk, from an explicit time: nothing before it
    ("2026-05-10", None, True),   # a walk over everything covers any watermark
    ("2026-05-10", "2026-05-10", True),
    ("2026-05-10", "2026-05-11", False),  # a gap behind an explicit later --since
])
def test_which_completed_walks_move_the_watermark(watermark, since, moves):
    from nomos_billing.models import NomosSyncState

    def at(day: str | None) -> datetime | None:
        return None if day is None else datetime.fromisoformat(day).replace(tzinfo=dt_timezone.utc)

    NomosSyncState.objects.create(name=catchup.STATE_NAME, watermark=at(watermark))
    started = at("2026-05-20")
    assert catchup.complete(catchup.Walk(updated_since=at(since), started_at=started), 7) is moves
    state = NomosSyncState.objects.get(name=catchup.STATE_NAME)
    assert state.watermark == (started if moves else at(watermark))
    assert state.last_count == 7
