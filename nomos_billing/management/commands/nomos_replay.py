"""``manage.py nomos_replay [--failed] [--stuck] [EVENT_ID ...]``: process webhook events again.

``--stuck`` takes over events left ``processing`` by a worker that died (a claim older than
``CLAIM_TIMEOUT``); ``--failed`` includes them, since they failed too, just without a record.

For events that failed (Nomos was down, a bug was fixed) or that never arrived: an id we never
stored is fetched with ``GET /events/{id}`` and recorded first. Processing fetches the current
state, so replaying an event that was processed before is harmless.

With ``TASK_BACKEND`` set, each event is enqueued for a worker instead (printed as "queued");
the command stops when the queue refuses one.

Exit code 1 (``CommandError``) when an event fails; when Nomos is unreachable the command
stops at once with one line saying so, since every further event would fail the same way.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from nomos_billing import tasks
from nomos_billing.client import get_client
from nomos_billing.deliveries import record_event
from nomos_billing.exceptions import EnqueueError, InvalidEvent, NomosAPIError, NomosError
from nomos_billing.models import WebhookEvent
from nomos_billing.processing import process_event

from ._errors import command_error, one_line

#: What became of one replayed event.
Replayed = Literal["processed", "ignored", "failed", "busy", "queued"]


class Command(BaseCommand):
    help = (
        "Process stored webhook events again (--failed: all failed ones); an event id "
        "never received is fetched from Nomos (GET /events/{id}) and recorded first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("event_ids", nargs="*", metavar="EVENT_ID")
        parser.add_argument(
            "--failed",
            action="store_true",
            help="every event whose processing failed, and every stuck one (see --stuck)",
        )
        parser.add_argument(
            "--stuck",
            action="store_true",
            help="every event left 'processing' by a dead worker (claim older than CLAIM_TIMEOUT)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        ids: list[str] = list(dict.fromkeys(options["event_ids"]))
        if not ids and not options["failed"] and not options["stuck"]:
            raise CommandError("Name event ids (evt_...) or pass --failed or --stuck.")
        if options["failed"] or options["stuck"]:
            stuck = WebhookEvent.objects.stuck()
            now = timezone.now()
            for event_id, claimed_at in stuck.values_list("event_id", "claimed_at"):
                age = int((now - claimed_at).total_seconds()) if claimed_at else 0
                self.stdout.write(f"{event_id}: stuck in processing for {age} s, taking over")
            wanted = WebhookEvent.objects.filter(pk__in=stuck.values("pk"))
            if options["failed"]:
                wanted |= WebhookEvent.objects.filter(status=WebhookEvent.Status.FAILED)
            ids += [
                i
                for i in wanted.order_by("received_at").values_list("event_id", flat=True)
                if i not in ids
            ]
        if not ids:
            self.stdout.write("No failed events." if options["failed"] else "No stuck events.")
            return
        counts: dict[Replayed, int] = dict.fromkeys(get_args(Replayed), 0)
        for event_id in ids:
            outcome = self._replay(event_id)
            counts[outcome] += 1
        summary = (
            f"Replayed {len(ids)} events: {counts['processed']} processed, "
            f"{counts['ignored']} ignored, {counts['failed']} failed, "
            f"{counts['busy']} in progress elsewhere."
        )
        if counts["queued"]:
            summary = f"Queued {counts['queued']} of {len(ids)} events for the task worker."
        if counts["failed"]:
            raise CommandError(summary)
        self.stdout.write(self.style.SUCCESS(summary))

    def _event(self, event_id: str) -> WebhookEvent | None:
        event = WebhookEvent.objects.filter(event_id=event_id).first()
        if event is not None:
            return event
        try:
            data = get_client().get_event(event_id)
        except NomosAPIError as exc:
            if exc.is_not_found:
                self.stderr.write(f"{event_id}: not found at Nomos (GET /events/{event_id})")
                return None
            raise self._stop(event_id, exc) from None
        except NomosError as exc:
            raise self._stop(event_id, exc) from None
        if not isinstance(data, dict) or data.get("id") != event_id:
            self.stderr.write(f"{event_id}: Nomos answered with a different or no event")
            return None
        try:
            event, _ = record_event(data)
        except InvalidEvent as exc:
            self.stderr.write(f"{event_id}: {exc}")
            return None
        self.stdout.write(f"{event_id}: fetched from Nomos and recorded")
        return event

    def _replay(self, event_id: str) -> Replayed:
        event = self._event(event_id)
        if event is None:
            return "failed"
        if tasks.backend_alias() is not None:
            try:
                tasks.enqueue(event.event_id, force=True)
            except EnqueueError as exc:
                raise CommandError(
                    one_line(
                        f"{event_id}: the task queue is unavailable ({exc}); stopped, run the "
                        "command again later."
                    )
                ) from None
            self.stdout.write(f"{event_id} {event.topic}: queued")
            return "queued"
        try:
            result = process_event(event, force=True)
        except Exception as exc:  # a bug in a handler or receiver: report it, go on
            self.stderr.write(
                one_line(f"{event_id} {event.topic}: failed: {type(exc).__name__}: {exc}")
            )
            return "failed"
        if not result.claimed:
            self.stdout.write(f"{event_id} {event.topic}: in progress elsewhere, skipped")
            return "busy"
        if result.retry and not result.waiting:
            raise CommandError(
                one_line(
                    f"{event_id} {event.topic}: {result.event.last_error}. Nomos is unavailable or "
                    "refused the credentials; stopped, run the command again later."
                )
            )
        status = result.status
        if status == WebhookEvent.Status.FAILED:
            self.stderr.write(
                one_line(f"{event_id} {event.topic}: failed: {result.event.last_error}")
            )
            return "failed"
        self.stdout.write(f"{event_id} {event.topic}: {status}")
        return "ignored" if status == WebhookEvent.Status.IGNORED else "processed"

    def _stop(self, event_id: str, exc: NomosError) -> CommandError:
        return CommandError(one_line(f"{event_id}: {command_error(exc)}"))
