"""Every ``NOMOS_BILLING`` setting, typed and read when used.

``nomos_settings.BREAKER_FAILURES`` is an ``int``, ``TIMEOUT`` a (connect, read) pair of floats,
``WEBHOOK_SECRETS`` a list: each key is read at call time (so ``override_settings`` works and
nothing is frozen at import) through its declaration in ``settings_table.TABLE``. A wrong value
never raises here: it falls back to the default with one logged warning per key and value, and
``manage.py check`` explains it (``checks.py``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import logging
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from .setting_parsers import MIN_WEBHOOK_SECRET_LENGTH, is_loopback
from .settings_table import BY_NAME, TABLE

SETTING_NAME = "NOMOS_BILLING"

DEFAULTS: dict[str, Any] = {s.name: s.default for s in TABLE}

#: Portal hosts accepted when ``PORTAL_HOSTS`` is not set: any brand under Nomos' portal domain.
DEFAULT_PORTAL_HOST_SUFFIX = ".customerportal.energy"
#: Checkout hosts accepted when ``CHECKOUT_HOSTS`` is not set: ``https://{plan.slug}.checkout.energy``.
DEFAULT_CHECKOUT_HOST_SUFFIX = ".checkout.energy"

logger = logging.getLogger(__name__)

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def key(name: str) -> str:
    """How messages name a key: ``NOMOS_BILLING['CLIENT_ID']``."""
    return f"{SETTING_NAME}['{name}']"


def raw_settings() -> dict[str, Any]:
    """``NOMOS_BILLING`` as written; an empty dict when it is not a dict (E003)."""
    value = getattr(settings, SETTING_NAME, None)
    return value if isinstance(value, dict) else {}


def _warn_once(name: str, value: Any, expected: str) -> None:
    # Per key and value, not per read: a hot path reads some keys on every call. The value is
    # remembered by a digest and never logged (it may be a secret).
    digest = hashlib.sha256(repr(value).encode()).hexdigest()[:16]
    with _warned_lock:
        if (name, digest) in _warned:
            return
        _warned.add((name, digest))
    logger.warning(
        "%s['%s'] is a %s, not %s; using the default (manage.py check explains).",
        SETTING_NAME,
        name,
        type(value).__name__,
        expected,
    )


#: The last parse of each key: (the value as written, a copy of it, its parse). A click reads a
#: few dozen keys; parsing each on every read cost it measurably (bench_goals' click goal). A
#: new value (override_settings, a new dict, a new object in the dict) or a list changed in
#: place (compared with the copy) is parsed again.
_parsed: dict[str, tuple[Any, Any, Any]] = {}
_MISSING = object()


#: Per thread, the values read under ``held()`` (None outside it).
_held = threading.local()


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Within, each key is read once: for a batch that reads the same few keys per item (a
    sync's page runs the resolvers for up to 100 customers), where a read costs about 2 µs
    and settings do not change halfway."""
    if getattr(_held, "values", None) is not None:
        yield
        return
    _held.values = {}
    try:
        yield
    finally:
        _held.values = None


def value_of(name: str) -> Any:
    """The key's normalised value; its default when it is missing or wrong."""
    kept = getattr(_held, "values", None)
    if kept is not None and name in kept:
        value = kept[name]
    else:
        written = raw_settings().get(name, _MISSING)
        cached = _parsed.get(name)
        if cached is not None and cached[0] is written and cached[1] == written:
            value = cached[2]
        else:
            value = _parse(name, written)
            mutable = isinstance(written, (list, dict, set))
            _parsed[name] = (written, copy.deepcopy(written) if mutable else written, value)
        if kept is not None:
            kept[name] = value
    # A fresh container each read, as a parse would give: a caller may change what it got.
    return value.copy() if isinstance(value, (list, dict)) else value


def _parse(name: str, written: Any) -> Any:
    setting = BY_NAME[name]
    if written is _MISSING:
        return setting.parse(setting.default)
    try:
        return setting.parse(written)
    except ValueError as exc:
        _warn_once(name, written, str(exc))
        return setting.parse(setting.default)


def is_wrong(name: str) -> bool:
    """True when the key is written with a value its parser refuses (the run time then uses the
    default): for what must not go ahead on a default the site did not choose."""
    raw = raw_settings()
    if name not in raw:
        return False
    try:
        BY_NAME[name].parse(raw[name])
    except ValueError:
        return True
    return False


class Settings:
    """``nomos_settings.CLIENT_ID`` etc., typed; unknown attributes raise ``AttributeError``.

    The annotations only type the attributes for mypy: each read goes to ``__getattr__``."""

    CLIENT_ID: str
    CLIENT_SECRET: str
    API_BASE_URL: str
    API_VERSION: str
    TIMEOUT: tuple[float, float]
    TOKEN_CACHE: str
    TOKEN_REFRESH_MARGIN: int
    MAX_RETRIES: int
    MAX_RETRY_WAIT: float
    WEBHOOK_TOLERANCE: int
    WEBHOOK_MAX_BYTES: int
    USER_RESOLVERS: list[str]
    METADATA_USER_KEY: str
    LINK_BY_EMAIL: bool
    BIND_LINKS_TO_EMAIL: bool
    LINK_CONFIRMATION_DAYS: int
    SITE_URL: str | None
    PORTAL_NEXT_PREFIXES: list[Any] | None  # entries that are not paths are skipped
    PORTAL_HOSTS: list[str] | None
    CHECKOUT_HOSTS: list[str] | None
    SIGNUP_URL: str | None
    PLAN_ID: str | None
    CHECKOUT_URL: str | None
    EVENT_RETENTION_DAYS: int
    BASE_TEMPLATE: str | None
    WEBHOOK_BUDGET: float
    CLICK_BUDGET: float
    CLAIM_TIMEOUT: float
    BREAKER_FAILURES: int
    BREAKER_COOLDOWN: float
    TASK_BACKEND: str | None
    WORKER_HANDOFF_TIMEOUT: float
    NOT_FOUND_RETRY_WINDOW: int
    RATE_LIMITS: dict[str, tuple[int, int] | None]
    RATE_LIMIT_CACHE: str
    API_RATE_LIMIT: float

    def __getattr__(self, name: str) -> Any:
        if name in BY_NAME:
            return value_of(name)
        raise AttributeError(name)

    @property
    def WEBHOOK_SECRETS(self) -> list[str]:  # noqa: N802 - mirrors the setting key
        """The secrets to verify with: stripped, comma-separated parts split, and never a blank
        one or (outside a loopback sandbox) one shorter than ``MIN_WEBHOOK_SECRET_LENGTH``:
        a secret anyone can guess would let anyone sign (the checks name each one dropped)."""
        least = 1 if self.api_is_loopback else MIN_WEBHOOK_SECRET_LENGTH
        return [s for s in value_of("WEBHOOK_SECRETS") if len(s) >= least]

    @property
    def handoff_timeout(self) -> float:
        """``WORKER_HANDOFF_TIMEOUT`` as seconds from 0 up to below ``WEBHOOK_BUDGET``; the
        default (at most half the budget) when it is not such a number (the checks explain)."""
        value: float = value_of("WORKER_HANDOFF_TIMEOUT")
        budget: float = value_of("WEBHOOK_BUDGET")
        if "WORKER_HANDOFF_TIMEOUT" not in raw_settings() or not value < budget:
            # Waiting must leave the view time to process the event itself.
            return min(float(DEFAULTS["WORKER_HANDOFF_TIMEOUT"]), budget / 2)
        return value

    def rate_limit(self, scope: str) -> tuple[int, int] | None:
        """``RATE_LIMITS[scope]`` as (requests, seconds), or ``None`` when switched off."""
        limits: dict[str, tuple[int, int] | None] = value_of("RATE_LIMITS")
        return limits[scope]

    @property
    def api_is_loopback(self) -> bool:
        """True when the API is a local sandbox (plain http is then acceptable)."""
        return _url_is_loopback(self.API_BASE_URL)

    @property
    def token_cache_key(self) -> str:
        """Namespaced per client id and base URL, hashed so neither is readable in the cache."""
        return _token_cache_key(value_of("CLIENT_ID"), self.API_BASE_URL)


# Pure functions of settings values, cached: the client asks on every API call.
@functools.lru_cache(maxsize=64)
def _url_is_loopback(url: str) -> bool:
    return is_loopback(urlsplit(url).hostname)


@functools.lru_cache(maxsize=64)
def _token_cache_key(client_id: str, base_url: str) -> str:
    ident = f"{client_id}|{base_url}".encode()
    return "nomos_billing:token:" + hashlib.sha256(ident).hexdigest()[:32]


nomos_settings = Settings()
