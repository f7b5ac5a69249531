"""Turn the client's errors into the one-line ``CommandError`` an operator reads.

Not a command (Django skips modules starting with ``_``). Messages name the URL and what to
check; they never contain a secret or a token (the exceptions do not carry them).
"""

from __future__ import annotations

from django.core.management.base import CommandError

from nomos_billing.conf import SETTING_NAME, nomos_settings
from nomos_billing.exceptions import (
    NomosAPIError,
    NomosConfigurationError,
    NomosError,
    NomosFilterIgnored,
    NomosServiceError,
    NomosUnavailable,
)


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def command_error(exc: NomosError) -> CommandError:
    base = nomos_settings.API_BASE_URL
    if isinstance(exc, NomosConfigurationError) and not isinstance(exc, NomosAPIError):
        return CommandError(one_line(exc))
    if isinstance(exc, NomosFilterIgnored):
        return CommandError(
            one_line(
                f"Nomos at {base} answered {exc.path} with {exc.item_id or 'an item'}, which does "
                f"not match {exc.filter}: the filter was ignored, so that page was refused and "
                "nothing from it was stored."
            )
        )
    if isinstance(exc, NomosAPIError) and exc.is_auth_failure:
        return CommandError(
            one_line(
                f"Nomos at {base} rejected the credentials ({exc}); check "
                f"{SETTING_NAME}['CLIENT_ID'] and {SETTING_NAME}['CLIENT_SECRET']."
            )
        )
    if isinstance(exc, NomosServiceError):
        return CommandError(one_line(f"Nomos at {base} is failing ({exc}); try again later."))
    if isinstance(exc, NomosUnavailable):
        return CommandError(
            one_line(
                f"Nomos at {base} is not reachable ({exc}); check {SETTING_NAME}['API_BASE_URL'] "
                "and that the service (or the sandbox) is running."
            )
        )
    return CommandError(one_line(f"Nomos at {base}: {exc}"))
