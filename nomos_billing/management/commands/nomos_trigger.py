"""``manage.py nomos_trigger TOPIC``: post a signed test event to a webhook URL.

Like ``stripe trigger``, for rehearsing what production will send: the event is signed with the
newest secret in ``WEBHOOK_SECRETS`` exactly as Nomos signs it, and ``--duplicate``, ``--stale``
and ``--bad-signature`` rehearse at-least-once delivery, clock skew and a wrong secret.

Exit code 0 when the site answered as it should (2xx, or 400 for ``--stale`` and
``--bad-signature``); 1 otherwise, with a one-line reason (a page of HTML from a wrong URL is
named, not printed). A topic Nomos does not document is sent, with a warning.
"""

from __future__ import annotations

import difflib
import json
import secrets
import time
from datetime import datetime, timezone
from typing import Any

import requests
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.urls import reverse

from nomos_billing.conf import SETTING_NAME, nomos_settings
from nomos_billing.signatures import HEADER, sign_payload
from nomos_billing.topics import TOPICS

from ._errors import one_line

DEFAULT_SITE = "http://127.0.0.1:8000"
#: Context keys a topic family carries (the event holds ids only).
#: ``invoice.*`` and ``meter_order.*`` name their subscription too (the document requires it).
TOPIC_CONTEXT = {
    "subscription": ("subscription",),
    "invoice": ("invoice", "subscription"),
    "meter_order": ("meter_order", "subscription"),
}
#: Topics that carry one more id than their family.
TOPIC_EXTRA = {"invoice.voided": ("voiding_invoice",)}


def build_event(topic: str, context: dict[str, str], event_id: str | None = None) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    return {
        "id": event_id or f"evt_test_{secrets.token_hex(12)}",
        "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "topic": topic,
        "context": context,
    }


class Command(BaseCommand):
    help = (
        "Sign a Nomos test event with the newest NOMOS_BILLING['WEBHOOK_SECRETS'] entry and "
        "POST it to the site's webhook URL; prints each response status."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("topic", help="e.g. test.event, subscription.created, invoice.paid")
        parser.add_argument(
            "--subscription",
            metavar="sub_...",
            help="context.subscription (needed by subscription.*, invoice.* and "
            "meter_order.* topics)",
        )
        parser.add_argument("--lead", metavar="lead_...", help="context.lead")
        parser.add_argument(
            "--context",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="any other context id, e.g. invoice=inv_...; repeatable",
        )
        parser.add_argument(
            "--url", help=f"webhook URL (default: {DEFAULT_SITE} + the nomos_billing:webhook path)"
        )
        parser.add_argument("--event-id", help="reuse an event id (default: a new evt_test_...)")
        parser.add_argument(
            "--duplicate",
            type=int,
            default=1,
            metavar="N",
            help="deliver the same event N times, re-signed each time",
        )
        parser.add_argument(
            "--stale",
            action="store_true",
            help="sign with a timestamp outside WEBHOOK_TOLERANCE (expect 400)",
        )
        parser.add_argument(
            "--bad-signature", action="store_true", help="sign with a wrong secret (expect 400)"
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=30.0,
            help="seconds to wait for each response (Nomos waits 30)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        topic: str = options["topic"]
        if topic not in TOPICS:
            close = difflib.get_close_matches(topic, TOPICS, n=1)
            self.stderr.write(
                self.style.WARNING(
                    f"Warning: {topic!r} is not a topic Nomos documents"
                    + (f" (did you mean {close[0]!r}?)" if close else "")
                    + "; sending it anyway."
                )
            )
        context = self._context(topic, options)
        if options["duplicate"] < 1:
            raise CommandError("--duplicate must be 1 or more.")
        secrets_list = nomos_settings.WEBHOOK_SECRETS
        if not secrets_list and not options["bad_signature"]:
            raise CommandError(
                f"{SETTING_NAME}['WEBHOOK_SECRETS'] is empty: there is no secret to sign with."
            )
        secret = secrets_list[0] if secrets_list else ""
        if options["bad_signature"]:
            secret = "whsec_wrong_" + secrets.token_hex(16)
        url = options["url"] or DEFAULT_SITE + reverse("nomos_billing:webhook")
        expect_rejection = options["stale"] or options["bad_signature"]

        event = build_event(topic, context, options["event_id"])
        body = json.dumps(event, separators=(",", ":")).encode()
        self.stdout.write(f"POST {topic} {event['id']} to {url}")
        statuses = []
        with requests.Session() as session:
            for n in range(1, options["duplicate"] + 1):
                timestamp = int(time.time())
                if options["stale"]:
                    timestamp -= nomos_settings.WEBHOOK_TOLERANCE + 60
                headers = {
                    "Content-Type": "application/json",
                    HEADER: sign_payload(body, secret, timestamp),
                    "User-Agent": "nomos-billing nomos_trigger",
                }
                try:
                    response = session.post(
                        url,
                        data=body,
                        headers=headers,
                        timeout=options["timeout"],
                        allow_redirects=False,
                    )
                except requests.RequestException as exc:
                    raise CommandError(
                        one_line(
                            f"could not POST to {url} ({type(exc).__name__}); is the site running "
                            "there? Pass --url to choose another address."
                        )
                    ) from None
                self.stdout.write(f"  delivery {n}: HTTP {response.status_code} {_reply(response)}")
                statuses.append(response.status_code)
        self._judge(statuses, expect_rejection, url)

    def _context(self, topic: str, options: dict[str, Any]) -> dict[str, str]:
        context: dict[str, str] = {}
        if options["subscription"]:
            context["subscription"] = options["subscription"]
        if options["lead"]:
            context["lead"] = options["lead"]
        for item in options["context"]:
            key, sep, value = item.partition("=")
            if not sep or not key or not value:
                raise CommandError(f"--context {item!r}: write KEY=VALUE, e.g. invoice=inv_123.")
            context[key] = value
        needed = (*TOPIC_CONTEXT.get(topic.split(".", 1)[0], ()), *TOPIC_EXTRA.get(topic, ()))
        missing = [key for key in needed if key not in context]
        if missing:
            hints = " and ".join(
                "--subscription sub_..." if key == "subscription" else f"--context {key}=..."
                for key in missing
            )
            ids = " and ".join(missing)
            raise CommandError(f"{topic} events carry a {ids} id: pass {hints}.")
        return context

    def _judge(self, statuses: list[int], expect_rejection: bool, url: str) -> None:
        wrong_place = next((s for s in statuses if s in (404, 405) or 300 <= s < 400), None)
        if wrong_place is not None:
            raise CommandError(
                f"the site answered HTTP {wrong_place} at {url}: no Nomos webhook view there. "
                "Check the URL (--url) and that your urls.py includes nomos_billing.urls."
            )
        crashed = next((s for s in statuses if s >= 500 and s != 503), None)
        if crashed is not None and not expect_rejection:
            raise CommandError(
                f"the site answered HTTP {crashed} at {url}: the webhook view failed. "
                "See the site's log for the traceback."
            )
        accepted = [s for s in statuses if 200 <= s < 300]
        if expect_rejection:
            if accepted:
                raise CommandError(
                    f"the site accepted a delivery it should have rejected "
                    f"(HTTP {accepted[0]}); check the webhook verification."
                )
            wrong = [s for s in statuses if not 400 <= s < 500]
            if wrong:
                raise CommandError(
                    f"the site answered HTTP {wrong[0]} instead of 400 to a "
                    "delivery it should reject. See the site's log."
                )
            self.stdout.write(self.style.SUCCESS("Rejected as expected."))
            return
        if len(accepted) != len(statuses):
            bad = next(s for s in statuses if not 200 <= s < 300)
            raise CommandError(
                f"the site answered HTTP {bad}; Nomos would retry this delivery. "
                "See the site's log."
            )
        self.stdout.write(self.style.SUCCESS(f"Accepted ({len(statuses)} of {len(statuses)})."))


def _reply(response: requests.Response) -> str:
    """The start of the site's answer on one line, or what kind of page it was: an error page
    of HTML (a wrong URL, DEBUG's traceback) says nothing useful in a terminal."""
    content_type = response.headers.get("Content-Type", "")
    if "html" in content_type or response.text.lstrip()[:1] == "<":
        return f"(an HTML page, {len(response.content)} bytes)"
    return one_line(response.text[:120])
