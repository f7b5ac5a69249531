"""Every ``NOMOS_BILLING`` setting, read when used.

One object whose properties look the setting up at call time, so ``override_settings`` works in
tests and nothing is frozen at import. The defaults stand in ``DEFAULTS``, in one visible place.
Validation is the system checks' job (``checks.py``); here a wrong type falls back to something
harmless so that ``manage.py check`` can explain instead of crashing.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

SETTING_NAME = "NOMOS_BILLING"
PRODUCTION_URL = "https://api.nomos.energy"
API_VERSION = "2026-05-27.curie"

DEFAULTS: dict[str, Any] = {
    "CLIENT_ID": "",
    "CLIENT_SECRET": "",
    # Newest first. A single string is accepted and treated as a one-item list.
    "WEBHOOK_SECRETS": [],
    "API_BASE_URL": PRODUCTION_URL,
    "API_VERSION": API_VERSION,
    # (connect, read) seconds; a single number is used for both.
    "TIMEOUT": (3.05, 10.0),
    "TOKEN_CACHE": "default",
    # Renew the token when less than this many seconds of its life are left.
    "TOKEN_REFRESH_MARGIN": 300,
    # How many times 429/5xx/connection failures are retried, and the longest Retry-After we
    # are willing to sleep through inside a web request before giving up with NomosUnavailable.
    "MAX_RETRIES": 3,
    "MAX_RETRY_WAIT": 5,
    "WEBHOOK_TOLERANCE": 300,
    "WEBHOOK_MAX_BYTES": 256 * 1024,
    "USER_RESOLVERS": [
        # Lead first: it trusts only our own database. Metadata links only a signed
        # reference (linking.user_reference); e-mail is off unless LINK_BY_EMAIL.
        "nomos_billing.linking.by_lead",
        "nomos_billing.linking.by_metadata",
        "nomos_billing.linking.by_email",
    ],
    "METADATA_USER_KEY": "django_user_id",
    "LINK_BY_EMAIL": False,
    # A customer found by lead or signed reference is linked at once only when its Nomos
    # e-mail address is the user's (addresses.same_address); otherwise the link is held until
    # the customer's mailbox confirms it (confirmation.py). False trusts whoever handed out
    # the checkout link: only for sites that verify identity themselves (W040).
    "BIND_LINKS_TO_EMAIL": True,
    # How long the link in a confirmation mail works.
    "LINK_CONFIRMATION_DAYS": 7,
    # The site's own address (e.g. "https://example.com") for links in mails sent outside a
    # request (a webhook processed on a worker); None: django.contrib.sites' current site.
    "SITE_URL": None,
    "PORTAL_NEXT_PREFIXES": None,
    "PORTAL_HOSTS": None,
    # Hosts of Nomos' hosted checkout, which a minted link points at for a customer without a
    # subscription and a lead's link always does (None: *.checkout.energy and CHECKOUT_URL's).
    "CHECKOUT_HOSTS": None,
    "SIGNUP_URL": None,
    "PLAN_ID": None,
    # The plan's hosted checkout, e.g. "https://lumio.checkout.energy/", for
    # linking.checkout_url and {% nomos_checkout_url %}.
    "CHECKOUT_URL": None,
    "EVENT_RETENTION_DAYS": 30,
    # The site's base template our pages extend (it needs {% block content %}; {% block
    # title %} is filled too), or None for our own small layout.
    "BASE_TEMPLATE": None,
    # Time budgets (seconds) for everything one request does with Nomos: token, calls, retries
    # and backoff sleeps (budget.py). Nomos waits 30 s for a webhook's answer; a click should
    # show its page (the portal, or the 503 page) within a few seconds, also while Nomos hangs.
    "WEBHOOK_BUDGET": 20,
    "CLICK_BUDGET": 5,
    # A processing claim older than this was left by a dead worker and may be taken over. It
    # must exceed WEBHOOK_BUDGET, which bounds every processing (webhook, replay, task).
    "CLAIM_TIMEOUT": 60,
    # The outage breaker (breaker.py): after this many Nomos failures in a row, calls fail at
    # once for BREAKER_COOLDOWN seconds, then one probe decides. 0 switches it off.
    "BREAKER_FAILURES": 5,
    "BREAKER_COOLDOWN": 10,
    # An alias of the site's TASKS: webhooks are then processed by a task worker (tasks.py).
    # None processes each webhook inside its request.
    "TASK_BACKEND": None,
    # With TASK_BACKEND: seconds the webhook view waits for evidence that a worker is alive
    # before it answers 202; without it, the view processes the event itself (workers.py).
    # 0 trusts the queue (workers that run on a schedule).
    "WORKER_HANDOFF_TIMEOUT": 5,
    # Seconds after we first received a subscription.* event during which a 404 for its
    # subscription is taken as "not readable yet" (503, Nomos redelivers), not as final.
    "NOT_FOUND_RETRY_WINDOW": 3600,
    # Per signed-in user: at most this many requests per this many seconds in each scope
    # (ratelimit.py); a scope set to None is not limited, a scope left out keeps its default.
    "RATE_LIMITS": {
        "portal": (20, 60),  # portal clicks and portal/link/ together
        "signup": (5, 600),  # sign-up forms sent (POST /leads)
        "recent_checkout": (5, 300),  # clicks asking Nomos about the user's recent leads
    },
    # The cache alias the counters live in; shared by all workers, or each worker counts alone.
    "RATE_LIMIT_CACHE": "default",
    # Nomos' rate limit for these credentials (requests per second), shared by every process
    # through TOKEN_CACHE, clicks first (api_rate.py); None or 0: not limited on our side.
    "API_RATE_LIMIT": 10,
}

#: Portal hosts accepted when ``PORTAL_HOSTS`` is not set: any brand under Nomos' portal domain.
DEFAULT_PORTAL_HOST_SUFFIX = ".customerportal.energy"
#: Checkout hosts accepted when ``CHECKOUT_HOSTS`` is not set: ``https://{plan.slug}.checkout.energy``.
DEFAULT_CHECKOUT_HOST_SUFFIX = ".checkout.energy"


@functools.lru_cache(maxsize=256)
def is_loopback(host: str | None) -> bool:
    # Cached: a click asks several times (link checks, http allowed?) about the same few hosts.
    if not host:
        return False
    # RFC 6761: every name under .localhost is loopback (browsers resolve them so; the
    # sandbox's portal and checkout hosts are such names).
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: Nomos signing secrets are long random strings; anything shorter is a paste gone wrong. Against
#: a sandbox on loopback a short one is used without a word: the sandbox's own ``whsec_sandbox``
#: is the documented development setup, and ``check --deploy`` refuses a loopback API.
MIN_WEBHOOK_SECRET_LENGTH = 16


def webhook_secret_entries(value: Any) -> list[str] | None:
    """``WEBHOOK_SECRETS`` as written, split at commas and stripped, blanks kept so that the
    checks can name them by position; None when it is not a string or a list of strings.

    ``"whsec_new, whsec_old"`` (a comma string, or the README's ``os.environ[...].split(",")``)
    gives ``["whsec_new", "whsec_old"]``; Nomos secrets never contain a comma or a space.
    """
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        return None
    return [part.strip() for entry in value for part in entry.split(",")]


#: Bounds of a ``RATE_LIMITS`` entry: (requests, seconds).
MAX_RATE_REQUESTS = 100_000
MAX_RATE_WINDOW = 24 * 3600


def is_rate(value: Any) -> bool:
    """True for a (requests, seconds) pair of whole numbers within the bounds."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return False
    requests, seconds = value
    return all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= high
        for v, high in ((requests, MAX_RATE_REQUESTS), (seconds, MAX_RATE_WINDOW))
    )


class Settings:
    """``nomos_settings.CLIENT_ID`` etc.; unknown attributes raise ``AttributeError``."""

    @property
    def raw(self) -> dict[str, Any]:
        value = getattr(settings, SETTING_NAME, None)
        return value if isinstance(value, dict) else {}

    def get(self, name: str) -> Any:
        return self.raw.get(name, DEFAULTS[name])

    def __getattr__(self, name: str) -> Any:
        if name in DEFAULTS:
            return self.get(name)
        raise AttributeError(name)

    @property
    def WEBHOOK_SECRETS(self) -> list[str]:  # noqa: N802 - mirrors the setting key
        """The secrets to verify with: stripped, comma-separated parts split, and never a blank
        one or (outside a loopback sandbox) one shorter than ``MIN_WEBHOOK_SECRET_LENGTH``:
        a secret anyone can guess would let anyone sign (the checks name each one dropped)."""
        entries = webhook_secret_entries(self.get("WEBHOOK_SECRETS")) or []
        least = 1 if self.api_is_loopback else MIN_WEBHOOK_SECRET_LENGTH
        return [s for s in entries if len(s) >= least]

    @property
    def API_BASE_URL(self) -> str:  # noqa: N802
        value = self.get("API_BASE_URL")
        return str(value or PRODUCTION_URL).rstrip("/")

    @property
    def TIMEOUT(self) -> tuple[float, float]:  # noqa: N802
        value = self.get("TIMEOUT")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (float(value), float(value))
        try:
            connect, read = value
            return (float(connect), float(read))
        except (TypeError, ValueError):
            return DEFAULTS["TIMEOUT"]

    def seconds(self, name: str) -> float:
        """A duration setting as a positive float; the default when it is not one (the system
        checks explain the wrong value)."""
        value = self.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            return float(DEFAULTS[name])
        return float(value)

    @property
    def handoff_timeout(self) -> float:
        """``WORKER_HANDOFF_TIMEOUT`` as seconds from 0 up to below ``WEBHOOK_BUDGET``; the
        default (at most half the budget) when it is not such a number (the checks explain)."""
        value = self.get("WORKER_HANDOFF_TIMEOUT")
        budget = self.seconds("WEBHOOK_BUDGET")
        number = None if isinstance(value, bool) else value
        if not isinstance(number, (int, float)) or not 0 <= number < budget:
            # Waiting must leave the view time to process the event itself.
            return min(float(DEFAULTS["WORKER_HANDOFF_TIMEOUT"]), budget / 2)
        return float(number)

    def rate_limit(self, scope: str) -> tuple[int, int] | None:
        """``RATE_LIMITS[scope]`` as (requests, seconds), or ``None`` when switched off; the
        default for a scope left out or not such a pair (the checks explain it)."""
        value = self.get("RATE_LIMITS")
        limits = value if isinstance(value, dict) else {}
        default = DEFAULTS["RATE_LIMITS"][scope]
        pair = limits.get(scope, default)
        if pair is None:
            return None
        return (int(pair[0]), int(pair[1])) if is_rate(pair) else default

    @property
    def RATE_LIMIT_CACHE(self) -> str:  # noqa: N802
        value = self.get("RATE_LIMIT_CACHE")
        return value if isinstance(value, str) and value else DEFAULTS["RATE_LIMIT_CACHE"]

    @property
    def api_is_loopback(self) -> bool:
        """True when the API is a local sandbox (plain http is then acceptable)."""
        return _url_is_loopback(self.API_BASE_URL)

    @property
    def token_cache_key(self) -> str:
        """Namespaced per client id and base URL, hashed so neither is readable in the cache."""
        return _token_cache_key(str(self.get("CLIENT_ID")), self.API_BASE_URL)


# Pure functions of settings values, cached: the client asks on every API call.
@functools.lru_cache(maxsize=64)
def _url_is_loopback(url: str) -> bool:
    return is_loopback(urlsplit(url).hostname)


@functools.lru_cache(maxsize=64)
def _token_cache_key(client_id: str, base_url: str) -> str:
    ident = f"{client_id}|{base_url}".encode()
    return "nomos_billing:token:" + hashlib.sha256(ident).hexdigest()[:32]


nomos_settings = Settings()
