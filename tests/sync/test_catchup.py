"""The catch-up (``nomos_sync --since auto|ISO``): with every webhook lost, changes made at Nomos
reach our rows on the next walk; the watermark moves only after a complete, verified walk."""

from __future__ import annotations

import io
import re
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from urllib.parse import parse_qs

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from nomos_billing import catchup
from nomos_billing.models import NomosCustomer, NomosSubscription, NomosSyncState, WebhookEvent
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


# A walk of many pages as fast as it goes: what lands, not pacing.
@pytest.mark.sandbox_rate_limit(0)
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
    # Nomos' Date has whole seconds: two walks within one second leave it where it was.
    assert watermark() >= mark


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
    nomos.clock_skew += 2  # Nomos' Date has whole seconds: let one pass, without sleeping
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
    nomos.clock_skew += 2  # Nomos' Date has whole seconds: let one pass, without sleeping
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


# -- Nomos' clock ---------------------------------------------------------------------------------


def stored_status() -> dict[str, str]:
    return dict(NomosSubscription.objects.values_list("subscription_id", "status"))


def left_behind(nomos) -> list[str]:
    """Changes at Nomos we have not stored that the next ``--since auto`` walk would not ask
    for: any is a change lost for good (webhooks aside)."""
    mark = watermark()
    bound = None if mark is None else mark - catchup.DEFAULT_OVERLAP
    stored = stored_status()
    lost = []
    for sub_id, sub in nomos.subscriptions.items():
        updated = datetime.fromisoformat(sub["updated_at"].replace("Z", "+00:00"))
        if stored.get(sub_id) != sub["status"] and bound is not None and updated < bound:
            lost.append(sub_id)
    return lost


# Thirteen calls in a row: what a skewed clock misses, not pacing.
@pytest.mark.sandbox_rate_limit(0)
@pytest.mark.parametrize("skew_minutes", [-15, 15])
def test_with_nomos_clock_15_minutes_off_no_change_is_missed(nomos, skew_minutes):
    nomos.clock_skew = skew_minutes * 60
    ids = add_subscriptions(nomos, customers=5, per_customer=2)
    sync("--since", "auto")
    # The watermark is Nomos' time (its Date header), not ours.
    assert abs(watermark() - nomos.now()) < timedelta(seconds=5)
    assert abs(watermark() - timezone.now()) > timedelta(minutes=14)
    missed = 0
    for round_ in range(5):
        # Changes at Nomos between two walks, every webhook lost.
        for sub_id in ids[2 * round_: 2 * round_ + 2]:
            nomos.set_subscription_status(sub_id, "active")
        sync("--since", "auto")
        stored = stored_status()
        missed += sum(stored[i] != nomos.subscriptions[i]["status"] for i in ids)
        assert left_behind(nomos) == []
    assert missed == 0
    assert set(stored_status().values()) >= {"active"}
    assert all(stored_status()[i] == "active" for i in ids)


def test_our_clock_never_bounds_the_walk(nomos):
    """With Nomos 15 minutes behind, a bound from our clock (minus the 10-minute overlap) would
    be after every change Nomos stamps: the filter each walk sends is Nomos' time."""
    nomos.clock_skew = -15 * 60
    add_subscriptions(nomos, customers=1, per_customer=1)
    sync("--since", "auto")
    mark = watermark()
    nomos.request_log.clear()
    sync("--since", "auto")
    (asked,) = set(updated_since_asked(nomos))
    bound = datetime.fromisoformat(asked.replace("Z", "+00:00"))
    assert bound == mark - catchup.DEFAULT_OVERLAP
    assert bound < timezone.now() - timedelta(minutes=20)


def test_a_page_with_more_but_no_cursor_keeps_the_watermark_and_says_why(nomos):
    ids = add_subscriptions(nomos, customers=3, per_customer=50)
    sync("--since", "auto")
    mark = watermark()
    for sub_id in ids:
        nomos.set_subscription_status(sub_id, "active")
    # The first page says more follow but gives no cursor: the walk cannot go on.
    nomos.add_fault(LIST, Fault(drop_cursor=True), times=1)
    with pytest.raises(CommandError, match="has_more but no next_page") as excinfo:
        sync("--since", "auto", "--page-size", "100")
    assert "watermark kept at " + mark.isoformat() in str(excinfo.value)
    assert watermark() == mark
    state = NomosSyncState.objects.get()
    assert "has_more but no next_page" in state.last_error
    assert "watermark kept at " + mark.isoformat() in state.last_error
    # What the page carried was stored; nothing the walk did not reach is behind the mark.
    active = sum(status == "active" for status in stored_status().values())
    assert 90 <= active < 150
    assert left_behind(nomos) == []
    # The next complete walk brings every change.
    sync("--since", "auto", "--page-size", "100")
    assert all(stored_status()[i] == "active" for i in ids)
    assert NomosSyncState.objects.get().last_error == ""
    assert left_behind(nomos) == []


# A walk of many pages as fast as it goes: what lands, not pacing.
@pytest.mark.sandbox_rate_limit(0)
def test_an_error_on_the_last_page_leaves_nothing_behind_the_watermark(nomos):
    ids = add_subscriptions(nomos, customers=3, per_customer=50)
    sync("--since", "auto")
    mark = watermark()
    for sub_id in ids:
        nomos.set_subscription_status(sub_id, "active")
    nomos.add_fault(LIST, Fault(), times=1)
    nomos.add_fault(LIST, Fault(status=500), times=None)
    with pytest.raises(CommandError):
        sync("--since", "auto", "--page-size", "100")
    assert watermark() == mark
    assert left_behind(nomos) == []
    nomos.clear_faults()
    sync("--since", "auto")
    assert all(stored_status()[i] == "active" for i in ids)
    assert left_behind(nomos) == []


def test_an_item_we_could_not_store_keeps_the_watermark_until_it_can_be(nomos):
    ids = add_subscriptions(nomos, customers=2, per_customer=2)
    sync("--since", "auto")
    mark = watermark()
    nomos.set_subscription_status(ids[0], "active")
    nomos.set_subscription_status(ids[1], "ended")
    customer = nomos.subscriptions[ids[1]]["customer"]
    nomos.subscriptions[ids[1]]["customer"] = None
    with pytest.raises(CommandError, match="1 item without id or customer not stored"):
        sync("--since", "auto")
    assert watermark() == mark
    assert stored_status()[ids[0]] == "active"
    assert left_behind(nomos) == []
    # Nomos serves it whole again: the next walk stores it and moves on.
    nomos.subscriptions[ids[1]]["customer"] = customer
    nomos.clock_skew += 2  # Nomos' Date has whole seconds: let one pass, without sleeping
    out = sync("--since", "auto")
    assert stored_status()[ids[1]] == "ended"
    assert "watermark now" in out
    assert watermark() > mark


def test_without_a_date_the_mark_is_the_latest_change_the_walk_saw():
    walk = catchup.Walk(updated_since=None, started_at=timezone.now())
    assert walk.mark is None
    for stamp in ("2026-05-27T10:00:00.000Z", "2026-05-27T12:00:00.000Z", "not a date",
                  "2026-05-27T11:00:00.000Z", None, "2026-05-27T13:00:00", "",
                  1780000000, ["2026-05-27T14:00:00.000Z"]):
        walk.saw({"updated_at": stamp})
    assert walk.mark == datetime(2026, 5, 27, 12, tzinfo=dt_timezone.utc)
    walk.nomos_time = datetime(2026, 5, 27, 9, tzinfo=dt_timezone.utc)
    assert walk.mark == walk.nomos_time


def test_a_walk_with_no_clock_and_no_change_leaves_the_watermark(nomos):
    sync("--since", "auto")
    mark = watermark()
    walk = catchup.begin("auto")
    assert catchup.complete(walk, 0) is False
    assert watermark() == mark
    assert NomosSyncState.objects.get().last_error == ""


def test_a_complete_walk_is_stamped_for_the_health_view(nomos):
    before = timezone.now()
    sync("--since", "auto")
    state = catchup.get_state()
    assert before <= state.last_started_at <= state.last_completed_at <= timezone.now()
    assert state.last_error == ""


def test_the_watermark_never_moves_back(nomos):
    sync("--since", "auto")
    mark = watermark()
    nomos.clock_skew = -3600  # Nomos' clock jumps an hour back
    sync("--since", "auto")
    assert watermark() == mark


# -- customers Nomos changed ----------------------------------------------------------------------


def test_the_catch_up_refreshes_known_customers_nomos_changed(nomos):
    ids = add_subscriptions(nomos, customers=3, per_customer=1)
    sync("--since", "auto")
    customer_id = nomos.subscriptions[ids[0]]["customer"]
    nomos.customers[customer_id].update(
        {"email": "renamed@example.com", "first_name": "Renée", "last_name": "Neu"})
    before = NomosCustomer.objects.exclude(customer_id=customer_id).values_list(
        "customer_id", "updated_at")
    before = dict(before)
    nomos.reset_counts()
    out = sync("--since", "auto")
    row = NomosCustomer.objects.get(customer_id=customer_id)
    assert (row.email, row.first_name, row.last_name) == ("renamed@example.com", "Renée", "Neu")
    assert "1 known customer updated" in out
    # The others were read, not written.
    assert dict(NomosCustomer.objects.exclude(customer_id=customer_id).values_list(
        "customer_id", "updated_at")) == before
    # One call per 100 customers, none one by one.
    assert nomos.count("GET /customers") == 1
    assert nomos.count("GET /customers/{id}") == 0


@pytest.mark.django_db
def test_a_long_error_is_stored_cut_to_2000_characters():
    catchup.fail("x" * 5000)
    assert NomosSyncState.objects.get(name=catchup.STATE_NAME).last_error == "x" * 2000


def test_a_first_walk_with_two_problems_names_both_and_no_watermark(nomos):
    # The first walk ever (no watermark yet) meets an item it cannot store and a page saying
    # more follow without a cursor: both are named, and there is no watermark to keep.
    ids = add_subscriptions(nomos, customers=3, per_customer=50)
    for sub_id in ids:
        nomos.subscriptions[sub_id]["customer"] = None
    nomos.add_fault(LIST, Fault(drop_cursor=True), times=1)
    with pytest.raises(CommandError) as excinfo:
        sync("--since", "auto", "--page-size", "100")
    error = NomosSyncState.objects.get().last_error
    assert error.startswith("incomplete walk, watermark kept at unset: ")
    problems = error.split(": ", 1)[1].split("; ")
    assert len(problems) == 2
    assert "has_more but no next_page" in problems[0]
    assert re.fullmatch(r"\d+ items without id or customer not stored", problems[1])
    assert str(excinfo.value).startswith(error)
    assert watermark() is None


def test_a_walk_from_exactly_the_watermark_leaves_no_gap_and_moves_it(nomos):
    add_subscriptions(nomos, customers=1, per_customer=1)
    sync("--since", "auto")
    mark = watermark()
    nomos.clock_skew += 2  # Nomos' Date has whole seconds: let one pass, without sleeping
    out = sync("--since", mark.isoformat())
    assert "watermark now" in out
    assert watermark() > mark


def test_a_walk_that_begins_clears_the_last_error_and_stamps_its_start(nomos):
    # The health view shows a walk under way, not the last one's failure.
    catchup.fail("Nomos is unavailable")
    before = timezone.now()
    walk = catchup.begin("auto")
    state = catchup.get_state()
    assert state.last_error == ""
    assert before <= walk.started_at == state.last_started_at <= timezone.now()


def test_a_walk_whose_mark_is_the_watermark_does_not_say_it_moved(nomos):
    sync("--since", "auto")
    mark = watermark()
    walk = catchup.begin("auto")
    walk.nomos_time = mark
    assert catchup.complete(walk, 0) is False
    assert watermark() == mark


def test_an_incomplete_walk_says_the_watermark_did_not_move_and_cuts_its_reason(nomos):
    walk = catchup.begin("auto")
    walk.nomos_time = timezone.now()
    walk.problems.append("x" * 5000)
    assert catchup.complete(walk, 3) is False
    state = catchup.get_state()
    assert state.watermark is None
    assert state.last_count == 3
    assert len(state.last_error) == 2000
    assert state.last_error.startswith("incomplete walk, watermark kept at unset: xxx")


@pytest.mark.parametrize("problems", [[], ["has_more but no next_page"]],
                         ids=["complete", "incomplete"])
def test_a_walk_ending_writes_only_its_own_fields(nomos, connect_receiver, problems):
    # Another walk may begin while this one ends (a cron run and an operator's): its start
    # stamp, written in between, stays.
    from django.db.models.signals import pre_save

    walk = catchup.begin("auto")
    walk.nomos_time = timezone.now()
    walk.problems.extend(problems)
    other_start = timezone.now() + timedelta(seconds=5)

    def another_walk_begins(sender, instance, **kwargs):
        NomosSyncState.objects.filter(name=catchup.STATE_NAME).update(
            last_started_at=other_start)

    connect_receiver(pre_save, another_walk_begins, sender=NomosSyncState)
    catchup.complete(walk, 1)
    assert catchup.get_state().last_started_at == other_start
