"""Operator errors: settings only a person can fix, reported loudly but not in a flood.

A wrong client secret or a missing ``NOMOS_BILLING`` fails every request the same way until
someone edits the settings (under gunicorn the system checks never ran to say so). Each is
logged at ERROR with the setting to fix, once per ``COOLDOWN`` seconds for all workers that
share the token cache, instead of one line per click or webhook. The line never carries a
secret: it names keys, never their values.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import cast

from django.conf import settings as django_settings
from django.core.cache import caches

from .conf import SETTING_NAME, nomos_settings
from .exceptions import NomosConfigurationError, NomosCredentialsRefused

logger = logging.getLogger("nomos_billing.misconfiguration")

#: Seconds between two ERROR lines about the same problem.
COOLDOWN = 300

_local_lock = threading.Lock()
_local_last: dict[str, float] = {}


def setting_names(exc: NomosConfigurationError) -> str:
    """``NOMOS_BILLING['CLIENT_ID'] / NOMOS_BILLING['CLIENT_SECRET']`` for the log line."""
    keys = exc.settings or ()
    return " / ".join(f"{SETTING_NAME}[{key!r}]" for key in keys) or SETTING_NAME


def describe(exc: NomosConfigurationError) -> str:
    """One operator-facing sentence: what is wrong and which setting to fix."""
    if exc.kind == "refused":
        # The one configuration error that is also Nomos' answer (status, requestId).
        exc = cast(NomosCredentialsRefused, exc)
        return (
            f"Nomos at {nomos_settings.API_BASE_URL} refused our credentials (HTTP {exc.status}, "
            f"requestId {exc.request_id or '-'}): fix {setting_names(exc)} (run "
            "manage.py nomos_check_credentials). Users see the unavailable page until then."
        )
    if not hasattr(django_settings, SETTING_NAME):
        return (
            f"settings.{SETTING_NAME} is not set at all: add it with "
            f"{setting_names(exc)} (run manage.py check). {exc}"
        )
    return f"{exc} Fix {setting_names(exc)} (run manage.py check)."


def first_in_cooldown(key: str) -> bool:
    """True for the first report of ``key`` in this cool-down, across processes if we can."""
    try:
        # cache.add is atomic on shared backends: one worker wins, the others stay quiet.
        return bool(caches[nomos_settings.TOKEN_CACHE].add(key, 1, COOLDOWN))
    except Exception:  # a broken cache must not hide the configuration error
        now = time.monotonic()
        with _local_lock:
            last = _local_last.get(key)
            if last is not None and now - last < COOLDOWN:
                return False
            _local_last[key] = now
            return True


def report(exc: NomosConfigurationError) -> None:
    """Log ``exc`` at ERROR for the operator, once per cool-down per kind of problem."""
    ident = f"{type(exc).__name__}|{','.join(exc.settings)}|{nomos_settings.token_cache_key}"
    key = "nomos_billing:misconfigured:" + hashlib.sha256(ident.encode()).hexdigest()[:24]
    if first_in_cooldown(key):
        logger.error("%s", describe(exc))
