"""``manage.py nomos_sync``: backfill customers and subscriptions from ``GET /subscriptions``.

For a site that starts using nomos_billing with customers already at Nomos, or after webhooks
were lost. Pages are processed as they arrive (the client fetches the next page only when this
loop asks for it), so memory stays flat however many subscriptions there are. Each page is
stored with the webhook's rules (``sync_pages.upsert_subscriptions``: older reads ignored, only
changes written, the user resolvers run) in a few statements for the whole page, and a re-sync
that finds nothing changed writes nothing. List items carry only the customer's id: customers
new to us are fetched one by one while they are few, else by walking ``GET /customers`` once
(100 per call) as far as the pages need; those walked before their subscriptions come by are
kept (only the new ones' fields) in a temporary file (``stash``) until they do, so memory
stays one page however many customers there are.
Then each lead this site created that no stored subscription names yet is looked up
(``GET /leads/{id}``); a converted one has its subscription stored and linked by the lead.

``--dry-run`` does everything inside one transaction and rolls it back.

``--since auto|<ISO 8601>`` is the catch-up (``catchup``): only subscriptions updated since the
last complete walk (or the given time), every item checked against that filter by the client,
and the watermark (Nomos' clock) stored only after a complete walk; an incomplete one stores
what it saw, keeps the watermark and fails with the reason. Customers have no ``updated_at``
to filter on, so the catch-up also walks ``GET /customers`` (100 per call) and updates the
customers we know whose e-mail or names Nomos changed. Schedule ``--since auto`` every 15
minutes (cron, or a scheduling task backend) and lost webhooks heal themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from itertools import chain
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections, transaction

from nomos_billing import api_rate, catchup, leads, reads, sync_pages
from nomos_billing.client import get_client
from nomos_billing.exceptions import NomosError
from nomos_billing.lists import ListWalk
from nomos_billing.models import NomosCustomer
from nomos_billing.stash import CustomerStash

from ._errors import command_error, one_line

#: New customers fetched one by one before walking ``GET /customers`` instead: a catch-up
#: with a handful of new customers stays cheap, a first sync costs one call per 100 customers.
WALK_AFTER = 20
#: What ``columns.customer_fields`` reads of a Nomos customer: all the stash keeps of one.
CUSTOMER_KEYS = ("id", "email", "first_name", "last_name", "company_name", "type")


class _Rollback(Exception):
    """Raised at the end of a dry run to undo everything."""


class Command(BaseCommand):
    help = (
        "Backfill Nomos customers and subscriptions from GET /subscriptions (all pages), "
        "link customers to users with the configured resolvers, and print a summary."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="compute the same summary but save nothing"
        )
        parser.add_argument(
            "--page-size",
            type=int,
            default=100,
            metavar="N",
            help="subscriptions per API page, 1-100 (default 100)",
        )
        parser.add_argument(
            "--customer", metavar="cus_...", help="only this customer's subscriptions"
        )
        parser.add_argument(
            "--since",
            metavar="auto|ISO",
            help="catch-up: only subscriptions updated since the last complete "
            "walk (auto) or since an ISO 8601 time",
        )
        parser.add_argument(
            "--overlap",
            type=int,
            default=None,
            metavar="SECONDS",
            help="with --since auto: start this long before the watermark "
            f"(default {int(catchup.DEFAULT_OVERLAP.total_seconds())})",
        )

    def execute(self, *args: Any, **options: Any) -> Any:
        # A sync or catch-up spends Nomos' rate limit last, leaving clicks and webhooks room.
        with api_rate.priority("background"):
            return super().execute(*args, **options)

    def handle(self, *args: Any, **options: Any) -> None:
        if not 1 <= options["page_size"] <= 100:
            raise CommandError("--page-size must be between 1 and 100.")
        self.client = get_client()
        self.counts = {"seen": 0, "created": 0, "updated": 0, "linked": 0, "failed": 0}
        self.page_size = options["page_size"]
        self.verbosity = options["verbosity"]
        self.walk = self._plan(options)
        self.folded = 0
        try:
            with _folded_info(self.verbosity < 2) as fold:
                try:
                    if options["dry_run"]:
                        try:
                            with transaction.atomic():
                                self._run(options["customer"])
                                raise _Rollback
                        except _Rollback:
                            pass
                    else:
                        self._run(options["customer"])
                finally:
                    self.folded = fold.folded
        except NomosError as exc:
            error = command_error(exc)
            if self.walk is not None and not options["dry_run"]:
                catchup.fail(str(error))
            raise CommandError(
                one_line(
                    f"{error} (stopped after {self.counts['seen']} subscriptions; what was synced "
                    "before stays, run the command again to continue)"
                    if self.counts["seen"] and not options["dry_run"]
                    else error
                )
            ) from None
        self.moved = False
        if self.walk is not None and not options["dry_run"]:
            self.moved = catchup.complete(self.walk, self.counts["seen"])
        self._summary(options["dry_run"])
        if self.walk is not None and self.walk.problems:
            state = catchup.get_state()
            raise CommandError(
                one_line(
                    catchup.incomplete_message(self.walk, state.watermark if state else None)
                    + " (what was synced stays; the next walk repeats this stretch)"
                )
            )

    def _plan(self, options: dict[str, Any]) -> catchup.Walk | None:
        since = options["since"]
        if since is None:
            if options["overlap"] is not None:
                raise CommandError("--overlap goes with --since.")
            return None
        if options["customer"]:
            raise CommandError(
                "--since walks every customer; it cannot be combined with --customer."
            )
        overlap = options["overlap"]
        if overlap is not None and overlap < 0:
            raise CommandError("--overlap must be 0 or more seconds.")
        try:
            return catchup.begin(
                since,
                catchup.DEFAULT_OVERLAP if overlap is None else timedelta(seconds=overlap),
                record=not options["dry_run"],
            )
        except ValueError as exc:
            raise CommandError(f"--since: {exc}") from None

    # -- the loop -------------------------------------------------------------------------

    def _run(self, customer: str | None) -> None:
        since = self.walk.updated_since if self.walk is not None else None
        self.fetched_one_by_one = 0
        self.new_customers: CustomerStash | None = None  # filled by a customer walk
        self.customer_walk: Iterator[list[dict[str, Any]]] | None = None
        self.customers_refreshed = 0
        try:
            self._walk_subscriptions(customer, since, sync_pages.upsert_subscriptions)
        finally:
            self.customer_walk = None
            if self.new_customers is not None:
                self.new_customers.close()
                self.new_customers = None
        if customer is None:
            self._check_leads()
        # Unlinked customers overall (one query, no per-customer bookkeeping in memory).
        self.unlinked = NomosCustomer.objects.filter(user__isnull=True).count()

    def _walk_subscriptions(self, customer: str | None, since: Any, upsert: Any) -> None:
        if self.walk is not None:
            # Customers carry no updated_at to filter on: a change to a known one's e-mail
            # or name shows only by reading them all.
            self.new_customers = self._walk_customers(refresh_known=True)
        page: list[dict[str, Any]] = []
        listing = self.client.iter_subscriptions(
            limit=self.page_size, customer=customer, updated_since=since
        )
        for data in listing:
            if not isinstance(data.get("id"), str) or not _customer_id(data):
                self.counts["failed"] += 1
                self.stderr.write(f"  skipped an item without id or customer: {str(data)[:60]}")
            else:
                page.append(data)
                if self.walk is not None:
                    self.walk.saw(data)
            self.counts["seen"] += 1
            if self.counts["seen"] % self.page_size == 0:
                self._store(upsert, page)
                page = []
                if self.verbosity >= 1:
                    self.stdout.write(f"  {self.counts['seen']} subscriptions...")
        self._store(upsert, page)
        if not listing.complete:
            self.stderr.write(f"  the walk ended early: {listing.incomplete}")
        if self.walk is not None:
            self._check_walk(listing)

    def _check_walk(self, listing: ListWalk) -> None:
        """What decides whether the watermark may move: Nomos' clock, and a complete walk."""
        assert self.walk is not None
        self.walk.nomos_time = listing.server_time
        if not listing.complete:
            self.walk.problems.append(listing.incomplete)
        if self.counts["failed"]:
            self.walk.problems.append(
                f"{_count(self.counts['failed'], 'item')} without id or customer not stored"
            )

    def _store(self, upsert: Any, page: list[dict[str, Any]]) -> None:
        # The webhook's rules (sync.py), a page at a time (sync_pages.py): a few statements each.
        for result in upsert(page, self._fetch_customers) if page else ():
            self.counts["linked"] += result.linked
            self.counts["created" if result.subscription_created else "updated"] += 1
        _forget_queries()

    def _check_leads(self) -> None:
        """Leads we created that no stored subscription names: did they convert? With every
        webhook lost this is how a lead's customer gets linked (``by_lead``), since list items
        carry no lead and Nomos does not copy the lead's metadata onto the subscription."""
        self.leads_checked, self.leads_converted, linked = leads.check_open_leads(self.client)
        self.counts["linked"] += linked

    def _fetch_customers(self, ids: set[str]) -> dict[str, dict[str, Any]]:
        """The Nomos customers we have no row for. List items carry only the customer's id;
        a few are fetched one by one, but once more than ``WALK_AFTER`` are needed (a first
        sync), ``GET /customers`` is walked once, 100 per call, as far as the pages need:
        a customer walked before its subscriptions come by is kept (those fields only) in
        the stash until they do."""
        if self.new_customers is None and self.fetched_one_by_one + len(ids) > WALK_AFTER:
            self.new_customers = CustomerStash(CUSTOMER_KEYS)
            self.customer_walk = self._customer_pages()
        found = self.new_customers.take(sorted(ids)) if self.new_customers is not None else {}
        missing = ids - found.keys()
        while missing and self.customer_walk is not None:
            page = next(self.customer_walk, None)
            if page is None:
                self.customer_walk = None
                break
            # Nomos lists customers in the order of their subscriptions (newest first): most
            # go from the walk straight into this page, never through the stash.
            ahead = []
            for data in page:
                if data["id"] in missing:
                    found[data["id"]] = data
                    missing.discard(data["id"])
                else:
                    ahead.append(data)
            if ahead:
                # customer_walk is only ever set beside new_customers.
                assert self.new_customers is not None
                self.new_customers.put(ahead)
        for customer_id in sorted(missing):
            # Created at Nomos after the walk, or no walk yet.
            found[customer_id] = self.client.get_customer(customer_id)
            self.fetched_one_by_one += 1
        return found

    def _walk_customers(self, *, refresh_known: bool = False) -> CustomerStash:
        """The whole walk of ``_customer_pages`` at once, the new customers stashed on disk
        (``stash``: memory stays one page however many there are)."""
        # Held by the command at once: if the walk fails, _run's finally closes (deletes) it.
        new = self.new_customers = CustomerStash(CUSTOMER_KEYS)
        for page in self._customer_pages(refresh_known=refresh_known):
            new.put(page)
        return new

    def _customer_pages(self, *, refresh_known: bool = False) -> Iterator[list[dict[str, Any]]]:
        """``GET /customers`` walked a page at a time, as consumed: the customers we have no
        row for, as Nomos sent them; with ``refresh_known`` the rows of those we have are
        updated where Nomos changed them (``sync_pages.refresh_customers``)."""
        page: list[dict[str, Any]] = []
        listing = self.client.iter_customers(limit=100)
        # A None after the last item flushes the last page (the walk is never held whole).
        for data in chain(listing, [None]):
            if data is not None and isinstance(data.get("id"), str):
                page.append(data)
            if len(page) == 100 or (data is None and page):
                if refresh_known:
                    known, changed = sync_pages.refresh_customers(page)
                    self.customers_refreshed += changed
                else:
                    known = reads.existing(NomosCustomer, "customer_id", [c["id"] for c in page])
                yield [c for c in page if c["id"] not in known]
                page = []
        if not listing.complete:
            # New customers missing here are fetched one by one; known ones wait a walk.
            self.stderr.write(f"  the customer walk ended early: {listing.incomplete}")

    def _summary(self, dry_run: bool) -> None:
        c = self.counts
        prefix = "Dry run, nothing saved: would have synced" if dry_run else "Synced"
        # This run's figures, then the total of unlinked customers (not only this run's).
        line = (
            f"{prefix} {_count(c['seen'], 'subscription')}: {c['created']} created, "
            f"{c['updated']} updated, {_count(c['linked'], 'customer')} linked"
        )
        if c["failed"]:
            line += f", {c['failed']} skipped"
        unlinked = getattr(self, "unlinked", 0)
        line += (
            f"; {_count(unlinked, 'customer')} in all "
            f"{'is' if unlinked == 1 else 'are'} not linked to a user"
        )
        if self.walk is not None:
            since = self.walk.updated_since
            line += f"; updated since {since.isoformat() if since else 'the beginning'}"
            refreshed = getattr(self, "customers_refreshed", 0)
            if refreshed:
                line += f"; {_count(refreshed, 'known customer')} updated"
            mark = self.walk.mark
            if getattr(self, "moved", False) and mark is not None:
                line += f"; watermark now {mark.isoformat()} (Nomos' clock)"
        if getattr(self, "leads_checked", 0):
            line += (
                f"; {self.leads_converted} of {_count(self.leads_checked, 'open lead')} converted"
            )
        self.stdout.write(self.style.SUCCESS(line + "."))
        if self.folded and self.verbosity >= 1:
            self.stdout.write(
                f"  ({_count(self.folded, 'per-subscription log line')} at INFO folded into "
                "this summary; --verbosity 2 shows them)"
            )


def _forget_queries() -> None:
    # With DEBUG on, Django logs every query until the next request starts (up to 9,000, some
    # of them a page's INSERT): in a command that is the whole walk. A log that someone is
    # reading (``CaptureQueriesContext``, ``assertNumQueries``: ``force_debug_cursor``) stays.
    if not settings.DEBUG:
        return
    for connection in connections.all(initialized_only=True):
        if not connection.force_debug_cursor:
            connection.queries_log.clear()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class _FoldInfo(logging.Filter):
    """Counts and drops the INFO lines that the webhook code logs per subscription ("could
    not be linked", "linked to user ..."): one per item is noise in a backfill of thousands.
    Warnings and errors pass."""

    def __init__(self) -> None:
        super().__init__()
        self.folded = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.INFO:
            self.folded += 1
            return False
        return True


#: The loggers of the per-subscription code path (sync.upsert_from_subscription and linking).
PER_ITEM_LOGGERS = ("nomos_billing.sync", "nomos_billing.linking", "nomos_billing.leads")


@contextmanager
def _folded_info(enabled: bool) -> Iterator[_FoldInfo]:
    fold = _FoldInfo()
    loggers = [logging.getLogger(name) for name in PER_ITEM_LOGGERS] if enabled else []
    for logger in loggers:
        logger.addFilter(fold)
    try:
        yield fold
    finally:
        for logger in loggers:
            logger.removeFilter(fold)


def _customer_id(data: dict[str, Any]) -> str | None:
    customer = data.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    return customer if isinstance(customer, str) and customer else None
