"""``manage.py nomos_sync``: backfill customers and subscriptions from ``GET /subscriptions``.

For a site that starts using nomos_billing with customers already at Nomos, or after webhooks
were lost. Pages are processed as they arrive (the client fetches the next page only when this
loop asks for it), so memory stays flat however many subscriptions there are, and each
subscription costs a bounded number of queries. Each subscription is upserted with the same code
the webhook uses (``sync.upsert_from_subscription``), which also runs the user resolvers.

``--dry-run`` does everything inside one transaction and rolls it back.

``--since auto|<ISO 8601>`` is the catch-up (``catchup``): only subscriptions updated since the
last complete walk (or the given time), every item checked against that filter by the client,
and the watermark stored only after the walk finished. Schedule ``--since auto`` every 15
minutes (cron, or a scheduling task backend) and lost webhooks heal themselves.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from nomos_billing import catchup
from nomos_billing.client import get_client
from nomos_billing.exceptions import NomosError
from nomos_billing.models import NomosCustomer

from ._errors import command_error, one_line


class _Rollback(Exception):
    """Raised at the end of a dry run to undo everything."""


class Command(BaseCommand):
    help = ("Backfill Nomos customers and subscriptions from GET /subscriptions (all pages), "
            "link customers to users with the configured resolvers, and print a summary.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true",
                            help="compute the same summary but save nothing")
        parser.add_argument("--page-size", type=int, default=100, metavar="N",
                            help="subscriptions per API page, 1-100 (default 100)")
        parser.add_argument("--customer", metavar="cus_...",
                            help="only this customer's subscriptions")
        parser.add_argument("--since", metavar="auto|ISO",
                            help="catch-up: only subscriptions updated since the last complete "
                                 "walk (auto) or since an ISO 8601 time")
        parser.add_argument("--overlap", type=int, default=None, metavar="SECONDS",
                            help="with --since auto: start this long before the watermark "
                                 f"(default {int(catchup.DEFAULT_OVERLAP.total_seconds())})")

    def handle(self, *args: Any, **options: Any) -> None:
        if not 1 <= options["page_size"] <= 100:
            raise CommandError("--page-size must be between 1 and 100.")
        self.client = get_client()
        self.counts = {"seen": 0, "created": 0, "updated": 0, "linked": 0, "failed": 0}
        self.page_size = options["page_size"]
        self.verbosity = options["verbosity"]
        self.walk = self._plan(options)
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
        except NomosError as exc:
            error = command_error(exc)
            if self.walk is not None and not options["dry_run"]:
                catchup.fail(str(error))
            raise CommandError(one_line(
                f"{error} (stopped after {self.counts['seen']} subscriptions; what was synced "
                "before stays, run the command again to continue)"
                if self.counts["seen"] and not options["dry_run"] else error
            )) from None
        self.moved = False
        if self.walk is not None and not options["dry_run"]:
            self.moved = catchup.complete(self.walk, self.counts["seen"])
        self._summary(options["dry_run"])

    def _plan(self, options: dict[str, Any]) -> catchup.Walk | None:
        since = options["since"]
        if since is None:
            if options["overlap"] is not None:
                raise CommandError("--overlap goes with --since.")
            return None
        if options["customer"]:
            raise CommandError("--since walks every customer; it cannot be combined with "
                               "--customer.")
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
        for data in self.client.iter_subscriptions(limit=self.page_size, customer=customer,
                                                   updated_since=since):
            self._sync_one(data)
            self.counts["seen"] += 1
            if self.counts["seen"] % self.page_size == 0 and self.verbosity >= 1:
                self.stdout.write(f"  {self.counts['seen']} subscriptions...")
        # Unlinked customers overall (one query, no per-customer bookkeeping in memory).
        self.unlinked = NomosCustomer.objects.filter(user__isnull=True).count()

    def _sync_one(self, data: dict[str, Any]) -> None:
        from nomos_billing.sync import upsert_from_subscription

        customer_id = _customer_id(data)
        if not isinstance(data.get("id"), str) or not customer_id:
            self.counts["failed"] += 1
            self.stderr.write(f"  skipped an item without id or customer: {str(data)[:60]}")
            return
        was_linked = NomosCustomer.objects.filter(customer_id=customer_id,
                                                  user__isnull=False).exists()
        # The webhook's own code: fetches a list item's customer only when it is new to us and
        # runs the user resolvers for an unlinked customer.
        result = upsert_from_subscription(data)
        if result.customer.user_id is not None and not was_linked:
            self.counts["linked"] += 1
        self.counts["created" if result.subscription_created else "updated"] += 1

    def _summary(self, dry_run: bool) -> None:
        c = self.counts
        prefix = "Dry run, nothing saved: would have synced" if dry_run else "Synced"
        line = (f"{prefix} {c['seen']} subscriptions: {c['created']} created, "
                f"{c['updated']} updated, {c['linked']} customers linked, "
                f"{getattr(self, 'unlinked', 0)} customers unlinked")
        if c["failed"]:
            line += f", {c['failed']} skipped"
        if self.walk is not None:
            since = self.walk.updated_since
            line += f"; updated since {since.isoformat() if since else 'the beginning'}"
            if getattr(self, "moved", False):
                line += f"; watermark now {self.walk.started_at.isoformat()}"
        self.stdout.write(self.style.SUCCESS(line + "."))


def _customer_id(data: dict[str, Any]) -> str | None:
    customer = data.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    return customer if isinstance(customer, str) and customer else None

