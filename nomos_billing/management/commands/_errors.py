"""Turn the client's errors into the one-line ``CommandError`` an operator reads.

Not a command (Django skips modules starting with ``_``). Messages name the URL and what to
check; they never contain a secret or a token (the exceptions do not carry them).
"""

from __future__ import annotations

from typing import cast

from django.core.management.base import CommandError

from nomos_billing.conf import SETTING_NAME, nomos_settings
from nomos_billing.exceptions import NomosAPIError, NomosError, NomosFilterIgnored


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def command_error(exc: NomosError) -> CommandError:
    base = nomos_settings.API_BASE_URL
    kind = exc.kind
    if kind == "misconfigured":
        return CommandError(one_line(exc))
    if kind == "filter_ignored":
        ignored = cast(NomosFilterIgnored, exc)
        return CommandError(
            one_line(
                f"Nomos at {base} answered {ignored.path} with {ignored.item_id or 'an item'}, "
                f"which does not match {ignored.filter}: the filter was ignored, so that page "
                "was refused and nothing from it was stored."
            )
        )
    if kind == "refused":
        return CommandError(
            one_line(
                f"Nomos at {base} rejected the credentials ({exc}); check "
                f"{SETTING_NAME}['CLIENT_ID'] and {SETTING_NAME}['CLIENT_SECRET']."
            )
        )
    if kind == "outage" and isinstance(exc, NomosAPIError):
        # Nomos answered (429/5xx): it is there, but failing.
        return CommandError(one_line(f"Nomos at {base} is failing ({exc}); try again later."))
    if kind in ("outage", "rate_limited"):
        return CommandError(
            one_line(
                f"Nomos at {base} is not reachable ({exc}); check {SETTING_NAME}['API_BASE_URL'] "
                "and that the service (or the sandbox) is running."
            )
        )
    return CommandError(one_line(f"Nomos at {base}: {exc}"))
