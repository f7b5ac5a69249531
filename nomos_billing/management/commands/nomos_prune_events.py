"""``manage.py nomos_prune_events``: delete webhook events older than the retention period.

Run it daily (cron, a scheduler). Events are only a log and the dedupe record: Nomos stops
redelivering after about three days, so anything older than ``EVENT_RETENTION_DAYS`` (30)
can go. One DELETE statement; no model signals are involved.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from nomos_billing.conf import SETTING_NAME, is_wrong, nomos_settings
from nomos_billing.models import WebhookEvent


class Command(BaseCommand):
    help = (
        f"Delete webhook events received more than {SETTING_NAME}['EVENT_RETENTION_DAYS'] "
        "days ago (default 30)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            metavar="N",
            help="keep the last N days instead of EVENT_RETENTION_DAYS",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="only count what would be deleted"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"]
        if days is None:
            # Never delete by a default the site did not choose: a wrong setting refuses.
            days = None if is_wrong("EVENT_RETENTION_DAYS") else nomos_settings.EVENT_RETENTION_DAYS
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise CommandError(
                f"The retention must be a whole number of days >= 1 (got {days!r}); check "
                f"--days or {SETTING_NAME}['EVENT_RETENTION_DAYS']."
            )
        cutoff = timezone.now() - timedelta(days=days)
        old = WebhookEvent.objects.filter(received_at__lt=cutoff)
        if options["dry_run"]:
            self.stdout.write(
                f"Would delete {old.count()} webhook events received before "
                f"{cutoff:%Y-%m-%d %H:%M} UTC (older than {days} days)."
            )
            return
        deleted, _ = old.delete()
        self.stdout.write(
            self.style.SUCCESS(
                f"Deleted {deleted} webhook events received before {cutoff:%Y-%m-%d %H:%M} UTC "
                f"(older than {days} days)."
            )
        )
