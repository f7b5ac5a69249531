"""``manage.py nomos_status [--json]``: the health page (``health.py``) for a terminal or a
monitoring probe. Exit code 0 either way: judging the figures is the monitor's job."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from nomos_billing.health import Health, collect


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _count(n: int, noun: str, plural: str = "") -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def render_text(health: Health) -> str:
    h = health

    def count(name: str) -> str:
        # A count that reached the bound (health.py) says so.
        value = getattr(h, name)
        if name in h.more:
            return f"more than {value}"
        return f"at least {value}" if name in h.at_least else str(value)

    lines = [
        f"Last verified delivery: {h.last_delivery_at.isoformat() if h.last_delivery_at else '-'}"
        f" ({_age(h.last_delivery_age)})",
        f"Last 24 h: {count('deliveries_24h')} deliveries of {count('events_24h')} events, "
        f"{count('failures_24h')} failed",
        f"Failed events: {count('failed')}; stuck in processing: {count('stuck')}",
    ]
    for line in h.problem_events:
        flag = "stuck" if line.stuck else "failed"
        lines.append(
            f"  {line.event_id} {line.topic} {flag} after {_count(line.attempts, 'attempt')}: "
            f"{line.last_error or '-'}"
        )
    lines += [
        f"Unlinked customers: {count('unlinked_customers')}",
        "Catch-up: "
        + (
            f"last completed {h.catch_up_completed_at.isoformat()} "
            f"({_count(h.catch_up_count, 'subscription')}), "
            f"watermark {h.watermark.isoformat() if h.watermark else '-'}"
            if h.catch_up_completed_at
            else "never completed"
        )
        + (f"; last error: {h.catch_up_error}" if h.catch_up_error else ""),
        "Access token: "
        + (f"cached, expires in {h.token_expires_in} s" if h.token_cached else "not cached"),
        f"Outage breaker: {h.breaker or 'not available'}",
        "Task backend: "
        + (
            f"{h.task_backend}, queue depth {'unknown' if h.queue_depth is None else h.queue_depth}"
            + (
                ", no worker seen"
                if h.worker_seen_age is None
                else f", a worker seen {h.worker_seen_age} s ago"
            )
            if h.task_backend
            else "none (webhooks processed inline)"
        ),
    ]
    return "\n".join(lines)


class Command(BaseCommand):
    help = (
        "Show the Nomos integration's health: deliveries, failed and stuck events, unlinked "
        "customers, catch-up, token (never the token itself), breaker, task queue."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="one JSON object, for monitoring")

    def handle(self, *args: Any, **options: Any) -> None:
        health = collect()
        if options["json"]:
            self.stdout.write(json.dumps(health.as_json(), sort_keys=True))
        else:
            self.stdout.write(render_text(health))
