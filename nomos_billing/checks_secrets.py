"""The checks of ``WEBHOOK_SECRETS``' entries: at least one, none blank, none too short to be
a Nomos signing secret. Entries are named by position: a secret is never printed."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.core.checks import CheckMessage, Error

from .conf import key
from .setting_parsers import MIN_WEBHOOK_SECRET_LENGTH, is_loopback

E_WEBHOOK_SECRETS = "nomos_billing.E002"
# Secrets start at 70.
E_WEAK_WEBHOOK_SECRET = "nomos_billing.E070"

Messages = list[CheckMessage]


def check_webhook_secrets(raw: dict[str, Any], values: dict[str, Any], bad: set[str]) -> Messages:
    if "WEBHOOK_SECRETS" in bad:
        return []
    entries: list[str] = values["WEBHOOK_SECRETS"]
    messages = [] if any(entries) else [_no_webhook_secret()]
    return messages + _weak_webhook_secrets(values, entries)


def _weak_webhook_secrets(values: dict[str, Any], entries: list[str]) -> Messages:
    """One error per blank entry, and per short one unless the API is a sandbox on loopback
    (whose own secret is ``whsec_sandbox``), by position: a secret is never printed."""
    sandbox = is_loopback(urlsplit(values["API_BASE_URL"]).hostname)
    hint = (
        "Copy the endpoint's signing secret from the Nomos dashboard, without spaces. "
        "Positions count the comma-separated parts: a trailing comma or a doubled one "
        'adds a blank entry ("whsec_new,whsec_old" or ["whsec_new", "whsec_old"]).'
    )
    messages: Messages = []
    for position, secret in enumerate(entries, start=1):
        where = f"{key('WEBHOOK_SECRETS')} entry {position}"
        if not secret:
            messages.append(
                Error(
                    f"{where} is empty or only whitespace; it is never used to verify.",
                    hint=hint,
                    id=E_WEAK_WEBHOOK_SECRET,
                )
            )
        elif len(secret) < MIN_WEBHOOK_SECRET_LENGTH and not sandbox:
            messages.append(
                Error(
                    f"{where} is shorter than {MIN_WEBHOOK_SECRET_LENGTH} characters, too short "
                    "to be a Nomos signing secret; it is never used to verify.",
                    hint=hint,
                    id=E_WEAK_WEBHOOK_SECRET,
                )
            )
    return messages


def _no_webhook_secret() -> CheckMessage:
    return Error(
        f"{key('WEBHOOK_SECRETS')} must be a non-empty list of signing secrets (newest "
        "first); without one every webhook delivery is rejected.",
        hint="Copy the endpoint's signing secret from the Nomos dashboard: "
        '"WEBHOOK_SECRETS": env.list("NOMOS_WEBHOOK_SECRETS"). During a rotation list '
        "the new secret first and the old one after it.",
        id=E_WEBHOOK_SECRETS,
    )
