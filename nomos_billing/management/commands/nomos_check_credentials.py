"""``manage.py nomos_check_credentials``: do the configured credentials work?

Fetches a fresh token (not the cached one) and prints the API, the client id, the granted scope
and whether portal links can be minted (that is a write: ``write:*``). Never prints the token.
Exit code 1 when the token request fails or the scope cannot mint portal links. A token answer
without ``scope`` (the provider's guides show none) says nothing either way: reported, not failed.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from nomos_billing import breaker
from nomos_billing.client import NomosClient
from nomos_billing.conf import nomos_settings
from nomos_billing.exceptions import NomosError

from ._errors import command_error, one_line

WRITE_SCOPES = {"write:*"}


def describe_breaker() -> str:
    """The outage breaker's shared state in words (never raises: the check must run)."""
    try:
        state = breaker.state()
    except Exception as exc:  # the cache itself may be what is down
        return f"unknown (the cache cannot be read: {type(exc).__name__})"
    if not state.enabled:
        return "off (BREAKER_FAILURES is 0)"
    if not state.open:
        return f"closed ({state.failures} recent failures)"
    if state.retry_in > 0:
        return (
            f"OPEN after {state.failures} failures: calls fail at once; a probe in "
            f"{state.retry_in:.0f} s"
        )
    return f"OPEN after {state.failures} failures: the next call is the probe"


class Command(BaseCommand):
    help = (
        "Fetch a Nomos access token with NOMOS_BILLING's credentials and report the granted "
        "scope and whether portal links can be minted. Never prints the token."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--read-only-ok",
            action="store_true",
            help="exit 0 even when the scope cannot mint portal links (a webhook-only site)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # A client of its own: the check must not reuse (or replace) the shared cached token.
        client = NomosClient()
        where = "local sandbox" if nomos_settings.api_is_loopback else "remote"
        self.stdout.write(
            f"Nomos API:  {client.base_url} ({where}, API version {client.api_version})"
        )
        self.stdout.write(f"Client id:  {client.client_id or '(not set)'}")
        self.stdout.write(f"Breaker:    {describe_breaker()}")
        try:
            token = client.fetch_token()
        except NomosError as exc:
            raise command_error(exc) from None
        finally:
            client.close()
        scopes = token.scopes
        self.stdout.write(f"Token:      granted, valid for {int(token.remaining())} s (not shown)")
        self.stdout.write(f"Scope:      {token.scope or '(none given)'}")
        if not scopes:
            # The guides' token answers carry no scope: its absence is not a refusal.
            self.stdout.write(
                self.style.WARNING(
                    "Portal links: unknown (Nomos named no scope); minting needs write:*, and "
                    "a refusal shows as HTTP 403 on the first portal click"
                )
            )
            return
        can_mint = bool(WRITE_SCOPES & set(scopes))
        if can_mint:
            self.stdout.write(self.style.SUCCESS("Portal links: can be minted (write:* granted)"))
            return
        message = one_line(
            f"the credentials work but the scope {token.scope or '(empty)'!r} lacks write:*, so "
            "minting portal links will fail with HTTP 403; ask Nomos for write access."
        )
        if options["read_only_ok"]:
            self.stdout.write(self.style.WARNING("Portal links: cannot be minted: " + message))
            return
        raise CommandError(message)
