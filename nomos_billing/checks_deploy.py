"""``check --deploy`` only: what matters in production, not on a developer's machine (the
sandbox's published URL, credentials and webhook secret left in a production settings file; an
SMTP backend without a timeout)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.mail.backends.smtp import EmailBackend as SMTPBackend
from django.utils.module_loading import import_string

from .conf import DEFAULTS, SETTING_NAME, key
from .setting_parsers import is_loopback, webhook_secret_entries

# Ids are stable: sites silence them with SILENCED_SYSTEM_CHECKS, so never reuse one.
W_MAIL_NO_TIMEOUT = "nomos_billing.W062"
# Secrets and production (check --deploy) start at 70.
E_DEPLOY_SANDBOX_URL = "nomos_billing.E071"
E_DEPLOY_SANDBOX_CREDENTIALS = "nomos_billing.E072"
E_DEPLOY_SANDBOX_SECRET = "nomos_billing.E073"

#: What the sandbox publishes (``python -m nomos_billing.sandbox``, its pytest plugin, the
#: README's development defaults): in production they mean the defaults were left in place.
SANDBOX_CLIENT_ID = "sandbox-client"
SANDBOX_CLIENT_SECRET = "sandbox-secret"
SANDBOX_WEBHOOK_SECRET = "whsec_sandbox"


@register(Tags.security, "nomos_billing", deploy=True)
def check_deploy(app_configs: Iterable[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """``check --deploy`` with ``DEBUG = False``: the development defaults (the sandbox's URL,
    credentials and webhook secret) left in a production settings file."""
    raw = getattr(settings, SETTING_NAME, None)
    if settings.DEBUG or not isinstance(raw, dict):
        return []
    messages: list[CheckMessage] = []
    base_url = raw.get("API_BASE_URL", DEFAULTS["API_BASE_URL"])
    if isinstance(base_url, str) and is_loopback(urlsplit(base_url).hostname):
        messages.append(
            Error(
                f"{key('API_BASE_URL')} is {base_url!r}, a sandbox on loopback, with DEBUG off.",
                hint='Set it to "https://api.nomos.energy" in production (e.g. from '
                "NOMOS_API_BASE_URL); a forgotten variable leaves the development default.",
                id=E_DEPLOY_SANDBOX_URL,
            )
        )
    sandbox_keys = [
        name
        for name, published in (
            ("CLIENT_ID", SANDBOX_CLIENT_ID),
            ("CLIENT_SECRET", SANDBOX_CLIENT_SECRET),
        )
        if raw.get(name) == published
    ]
    if sandbox_keys:
        messages.append(
            Error(
                f"{' and '.join(key(k) for k in sandbox_keys)}: the sandbox's published "
                "credentials, with DEBUG off.",
                hint="Use the API credentials from the Nomos dashboard (e.g. NOMOS_CLIENT_ID and "
                "NOMOS_CLIENT_SECRET from the environment).",
                id=E_DEPLOY_SANDBOX_CREDENTIALS,
            )
        )
    entries = webhook_secret_entries(raw.get("WEBHOOK_SECRETS")) or []
    for position, secret in enumerate(entries, start=1):
        if secret == SANDBOX_WEBHOOK_SECRET:
            messages.append(
                Error(
                    f"{key('WEBHOOK_SECRETS')} entry {position} is the sandbox's published "
                    "webhook secret, with DEBUG off: anyone can sign a delivery with it.",
                    hint="Use the signing secret of the endpoint you registered in the Nomos "
                    "dashboard (e.g. NOMOS_WEBHOOK_SECRETS from the environment).",
                    id=E_DEPLOY_SANDBOX_SECRET,
                )
            )
    return messages


def _smtp_without_timeout() -> bool:
    """The site's default mailer is Django's SMTP backend (or a subclass) with no timeout."""
    if hasattr(settings, "MAILERS"):  # Django 6.1+
        mailers = settings.MAILERS
        config = mailers.get("default") if isinstance(mailers, dict) else None
        if not isinstance(config, dict):
            return False  # Django's own errors cover a missing default mailer
        path = config.get("BACKEND", "django.core.mail.backends.smtp.EmailBackend")
        options: Any = config.get("OPTIONS") or {}
        timeout = options.get("timeout") if isinstance(options, dict) else None
    else:
        # Django 6.1 without MAILERS warns on every read of an EMAIL_* setting; the site
        # already gets Django's own warning about it, the check must not add one per run.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            path = getattr(settings, "EMAIL_BACKEND", "")
            timeout = getattr(settings, "EMAIL_TIMEOUT", None)
    try:
        backend = import_string(path)
    except ImportError:
        return False
    return isinstance(backend, type) and issubclass(backend, SMTPBackend) and timeout is None


@register(Tags.security, "nomos_billing", deploy=True)
def check_mail_timeout(
    app_configs: Iterable[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """``check --deploy``: held links' confirmation mails go through the site's SMTP server
    inside a click or a webhook; without a timeout a server that does not answer would hold a
    worker for ever (the package cuts its own sends to the request's budget, Django's password
    reset and the site's own mails are not)."""
    if not _smtp_without_timeout():
        return []
    return [
        Warning(
            "The default e-mail backend is SMTP without a timeout: a mail server that accepts "
            "and never answers holds the request that sends (a held link's confirmation, a "
            "password reset) and its worker for ever.",
            hint="Set EMAIL_TIMEOUT (with MAILERS on Django 6.1: the default mailer's "
            'OPTIONS "timeout") to a few seconds, e.g. 10. nomos-billing cuts its own '
            "confirmation mails to the request's time budget either way.",
            id=W_MAIL_NO_TIMEOUT,
        )
    ]
