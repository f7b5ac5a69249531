"""System checks for ``NOMOS_BILLING``: every missing or wrong setting is explained by
``manage.py check`` with a stable id and a hint that says what to write."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from .conf import (
    API_VERSION,
    DEFAULTS,
    MAX_RATE_REQUESTS,
    MAX_RATE_WINDOW,
    MIN_WEBHOOK_SECRET_LENGTH,
    SETTING_NAME,
    is_loopback,
    is_rate,
    webhook_secret_entries,
)

# Ids are stable: sites silence them with SILENCED_SYSTEM_CHECKS, so never reuse one.
E_NOT_A_DICT = "nomos_billing.E003"
E_CREDENTIALS = "nomos_billing.E001"
E_WEBHOOK_SECRETS = "nomos_billing.E002"
E_BASE_URL = "nomos_billing.E004"
E_TIMEOUT = "nomos_billing.E005"
E_TOLERANCE = "nomos_billing.E006"
E_TOKEN_CACHE = "nomos_billing.E007"
E_REFRESH_MARGIN = "nomos_billing.E008"
E_MAX_BYTES = "nomos_billing.E009"
E_RESOLVERS = "nomos_billing.E010"
E_NEXT_PREFIXES = "nomos_billing.E011"
E_RETENTION = "nomos_billing.E012"
E_PORTAL_HOSTS = "nomos_billing.E013"
E_RETRIES = "nomos_billing.E014"
E_CHECKOUT_HOSTS = "nomos_billing.E042"
E_NOT_FOUND_WINDOW = "nomos_billing.E040"
E_CHECKOUT_URL = "nomos_billing.E041"
W_TOKEN_CACHE_LOCAL = "nomos_billing.W001"
W_LINK_BY_EMAIL = "nomos_billing.W002"
W_UNKNOWN_KEY = "nomos_billing.W003"
W_API_VERSION = "nomos_billing.W004"
W_HTTP_BASE_URL = "nomos_billing.W005"
# Task backend ids start at 30, clear of the ones above as they grow.
E_TASK_BACKEND = "nomos_billing.E030"
W_TASK_BACKEND_ALIAS = "nomos_billing.W030"
E_WORKER_HANDOFF = "nomos_billing.E031"
W_WORKER_HANDOFF = "nomos_billing.W031"
# Time budgets start at 50.
E_BUDGETS = "nomos_billing.E050"
W_WEBHOOK_BUDGET = "nomos_billing.W050"
W_CLAIM_TIMEOUT = "nomos_billing.W051"
W_BUDGET_TIMEOUT = "nomos_billing.W052"
# Linking and its confirmation mails start at 60.
E_CONFIRMATION_DAYS = "nomos_billing.E060"
E_SITE_URL = "nomos_billing.E061"
W_UNBOUND_LINKS = "nomos_billing.W060"
W_NO_SITE_URL = "nomos_billing.W061"
W_MAIL_NO_TIMEOUT = "nomos_billing.W062"
# Secrets and production (check --deploy) start at 70.
E_WEAK_WEBHOOK_SECRET = "nomos_billing.E070"
E_DEPLOY_SANDBOX_URL = "nomos_billing.E071"
E_DEPLOY_SANDBOX_CREDENTIALS = "nomos_billing.E072"
E_DEPLOY_SANDBOX_SECRET = "nomos_billing.E073"

#: What the sandbox publishes (``python -m nomos_billing.sandbox``, its pytest plugin, the
#: README's development defaults): in production they mean the defaults were left in place.
SANDBOX_CLIENT_ID = "sandbox-client"
SANDBOX_CLIENT_SECRET = "sandbox-secret"
SANDBOX_WEBHOOK_SECRET = "whsec_sandbox"
# Per-user rate limits start at 80.
E_RATE_LIMITS = "nomos_billing.E080"
E_RATE_LIMIT_CACHE = "nomos_billing.E081"
W_RATE_LIMIT_CACHE_LOCAL = "nomos_billing.W080"
# The site's share of Nomos' rate limit (api_rate) starts at 90.
E_API_RATE_LIMIT = "nomos_billing.E090"

_LOCAL_CACHE_BACKENDS = {
    "django.core.cache.backends.locmem.LocMemCache": "per-process",
    "django.core.cache.backends.dummy.DummyCache": "dummy",
}


def _key(name: str) -> str:
    return f"{SETTING_NAME}['{name}']"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


@register(Tags.security, "nomos_billing")
def check_settings(app_configs: Iterable[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    raw = getattr(settings, SETTING_NAME, None)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return [
            Error(
                f"{SETTING_NAME} must be a dict, not {type(raw).__name__}.",
                hint=f'Write {SETTING_NAME} = {{"CLIENT_ID": ..., "CLIENT_SECRET": ..., '
                '"WEBHOOK_SECRETS": [...]}} in your settings.',
                id=E_NOT_A_DICT,
            )
        ]
    messages: list[CheckMessage] = []
    for check in _CHECKS:
        messages.extend(check(raw))
    return messages


def _check_unknown_keys(raw: dict[str, Any]) -> list[CheckMessage]:
    return [
        Warning(
            f"{_key(name)} is not a setting nomos_billing knows; it is ignored.",
            hint="Check the spelling. Known keys: " + ", ".join(sorted(DEFAULTS)) + ".",
            id=W_UNKNOWN_KEY,
        )
        for name in sorted(set(raw) - set(DEFAULTS))
    ]


def _check_credentials(raw: dict[str, Any]) -> list[CheckMessage]:
    missing = [k for k in ("CLIENT_ID", "CLIENT_SECRET") if not raw.get(k)]
    if not missing:
        return []
    return [
        Error(
            f"{' and '.join(_key(k) for k in missing)} not set: nomos_billing cannot call the "
            "Nomos API.",
            hint="Create API credentials in the Nomos dashboard and set CLIENT_ID and "
            "CLIENT_SECRET (e.g. from the environment). For local development, run the sandbox "
            "(python -m nomos_billing.sandbox) and use the credentials it prints.",
            id=E_CREDENTIALS,
        )
    ]


def _check_webhook_secrets(raw: dict[str, Any]) -> list[CheckMessage]:
    entries = webhook_secret_entries(raw.get("WEBHOOK_SECRETS"))
    if entries is None or not any(entries):
        return [_no_webhook_secret(), *_weak_webhook_secrets(raw, entries or [])]
    return _weak_webhook_secrets(raw, entries)


def _weak_webhook_secrets(raw: dict[str, Any], entries: list[str]) -> list[CheckMessage]:
    """One error per blank entry, and per short one unless the API is a sandbox on loopback
    (whose own secret is ``whsec_sandbox``), by position: a secret is never printed."""
    base_url = raw.get("API_BASE_URL", DEFAULTS["API_BASE_URL"])
    sandbox = isinstance(base_url, str) and is_loopback(urlsplit(base_url).hostname)
    hint = (
        "Copy the endpoint's signing secret from the Nomos dashboard, without spaces. "
        "Positions count the comma-separated parts: a trailing comma or a doubled one "
        'adds a blank entry ("whsec_new,whsec_old" or ["whsec_new", "whsec_old"]).'
    )
    messages: list[CheckMessage] = []
    for position, secret in enumerate(entries, start=1):
        where = f"{_key('WEBHOOK_SECRETS')} entry {position}"
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
        f"{_key('WEBHOOK_SECRETS')} must be a non-empty list of signing secrets (newest "
        "first); without one every webhook delivery is rejected.",
        hint="Copy the endpoint's signing secret from the Nomos dashboard: "
        '"WEBHOOK_SECRETS": env.list("NOMOS_WEBHOOK_SECRETS"). During a rotation list '
        "the new secret first and the old one after it.",
        id=E_WEBHOOK_SECRETS,
    )


def _check_base_url(raw: dict[str, Any]) -> list[CheckMessage]:
    value = raw.get("API_BASE_URL", DEFAULTS["API_BASE_URL"])
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return [
            Error(
                f"{_key('API_BASE_URL')} must be an http(s) URL, not {value!r}.",
                hint='Use "https://api.nomos.energy", or the sandbox\'s URL in development.',
                id=E_BASE_URL,
            )
        ]
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        hint = (
            "Use https: the client secret and access tokens would travel in clear text. "
            "Plain http is only for a sandbox on loopback (127.0.0.1, localhost)."
        )
        if settings.DEBUG:
            return [
                Warning(f"{_key('API_BASE_URL')} uses plain http.", hint=hint, id=W_HTTP_BASE_URL)
            ]
        return [
            Error(
                f"{_key('API_BASE_URL')} uses plain http outside DEBUG.", hint=hint, id=E_BASE_URL
            )
        ]
    return []


def _check_api_version(raw: dict[str, Any]) -> list[CheckMessage]:
    value = raw.get("API_VERSION", API_VERSION)
    if value == API_VERSION:
        return []
    return [
        Warning(
            f"{_key('API_VERSION')} is {value!r}; this release of nomos_billing is built and "
            f"tested against {API_VERSION!r}.",
            hint=f'Remove the key or set it to "{API_VERSION}" unless you have tested the other '
            "version.",
            id=W_API_VERSION,
        )
    ]


def _check_timeout(raw: dict[str, Any]) -> list[CheckMessage]:
    if "TIMEOUT" not in raw:
        return []
    value = raw["TIMEOUT"]
    pair = (value, value) if _number(value) is not None else value
    try:
        connect, read = (_number(x) for x in pair)
    except (TypeError, ValueError):
        connect = read = None
    if connect is None or read is None or not (0 < connect <= 30) or not (0 < read <= 60):
        return [
            Error(
                f"{_key('TIMEOUT')} is {value!r}; it must be (connect, read) seconds, each above "
                "0, connect at most 30 and read at most 60.",
                hint='For example "TIMEOUT": (3.05, 10). A web worker waiting longer than that for '
                "Nomos is an outage of your site.",
                id=E_TIMEOUT,
            )
        ]
    return []


def _check_positive_int(
    name: str, check_id: str, low: int, high: int, hint: str
) -> Callable[[dict[str, Any]], list[CheckMessage]]:
    def check(raw: dict[str, Any]) -> list[CheckMessage]:
        if name not in raw:
            return []
        value = raw[name]
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return []
        return [
            Error(
                f"{_key(name)} is {value!r}; it must be a whole number from {low} to {high}.",
                hint=hint,
                id=check_id,
            )
        ]

    return check


def _check_cache_alias(
    raw: dict[str, Any], name: str, error_id: str, warning_id: str, local: str, hint: str
) -> list[CheckMessage]:
    """``name`` must be an alias in ``CACHES``; outside ``DEBUG``, a per-process one is worth a
    warning (``local`` says what it costs, ``{kind}`` naming the backend)."""
    alias = raw.get(name, DEFAULTS[name])
    caches = getattr(settings, "CACHES", {})
    if not isinstance(alias, str) or alias not in caches:
        return [
            Error(
                f"{_key(name)} is {alias!r}, which is not an alias in CACHES.",
                hint=f"Use one of: {', '.join(sorted(caches)) or '(no caches configured)'}.",
                id=error_id,
            )
        ]
    kind = _LOCAL_CACHE_BACKENDS.get(caches[alias].get("BACKEND", ""))
    if kind and not settings.DEBUG:
        return [Warning(local.format(alias=alias, kind=kind), hint=hint, id=warning_id)]
    return []


def _check_token_cache(raw: dict[str, Any]) -> list[CheckMessage]:
    alias = raw.get("TOKEN_CACHE", DEFAULTS["TOKEN_CACHE"])
    backend = getattr(settings, "CACHES", {}).get(alias, {}) if isinstance(alias, str) else {}
    dummy = _LOCAL_CACHE_BACKENDS.get(backend.get("BACKEND", "")) == "dummy"
    return _check_cache_alias(
        raw,
        "TOKEN_CACHE",
        E_TOKEN_CACHE,
        W_TOKEN_CACHE_LOCAL,
        "The token cache {alias!r} is a {kind} backend: every worker process fetches its own "
        "Nomos access token" + (" on every call." if dummy else "."),
        "Point TOKEN_CACHE at a cache shared by all workers (Redis, Memcached or the database "
        "cache) so that they share one token.",
    )


def _check_resolvers(raw: dict[str, Any]) -> list[CheckMessage]:
    value = raw.get("USER_RESOLVERS", DEFAULTS["USER_RESOLVERS"])
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        return [
            Error(
                f"{_key('USER_RESOLVERS')} must be a list of dotted paths.",
                hint='For example ["nomos_billing.linking.by_lead", '
                '"nomos_billing.linking.by_metadata"].',
                id=E_RESOLVERS,
            )
        ]
    messages: list[CheckMessage] = []
    for path in value:
        try:
            import_string(path)
        except ImportError as exc:
            messages.append(
                Error(
                    f"{_key('USER_RESOLVERS')} lists {path!r}, which cannot be imported ({exc}).",
                    hint="Each entry is the dotted path of a callable taking a "
                    "nomos_billing.linking.LinkRequest and returning a user or None.",
                    id=E_RESOLVERS,
                )
            )
    return messages


def _check_link_by_email(raw: dict[str, Any]) -> list[CheckMessage]:
    if not raw.get("LINK_BY_EMAIL"):
        return []
    return [
        Warning(
            f"{_key('LINK_BY_EMAIL')} is on: a Nomos customer is linked to the site user with the "
            "same e-mail address. If your site does not verify e-mail addresses, anyone can sign "
            "up with a customer's address and take over their portal access.",
            hint="Only enable it when every account's e-mail address is verified; prefer the "
            "metadata or lead resolvers. Silence this check once you have made sure.",
            id=W_LINK_BY_EMAIL,
        )
    ]


def _check_binding(raw: dict[str, Any]) -> list[CheckMessage]:
    value = raw.get("BIND_LINKS_TO_EMAIL", True)
    if value is True:
        return []
    return [
        Warning(
            f"{_key('BIND_LINKS_TO_EMAIL')} is {value!r}: a Nomos customer found by a lead or a "
            "signed checkout link is linked to that link's user even when the customer's e-mail "
            "address is someone else's. Whoever forwards their checkout link to another person "
            "gets that person's contract, address and bank details in their portal.",
            hint="Keep the default True unless your site verifies who signs each contract "
            "itself; silence this check once you have made sure.",
            id=W_UNBOUND_LINKS,
        )
    ]


def _check_site_url(raw: dict[str, Any]) -> list[CheckMessage]:
    value = raw.get("SITE_URL")
    if value is None:
        if "django.contrib.sites" in settings.INSTALLED_APPS:
            return []
        return [
            Warning(
                f"{_key('SITE_URL')} is not set and django.contrib.sites is not installed: "
                "a held link's confirmation mail sent while processing a webhook has no "
                "address of this site to link to, so it is not sent.",
                hint='Set it to the address users reach your site at, e.g. "https://example.com".',
                id=W_NO_SITE_URL,
            )
        ]
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return [
            Error(
                f"{_key('SITE_URL')} is {value!r}; it must be an http(s) address.",
                hint='For example "https://example.com" (no path needed).',
                id=E_SITE_URL,
            )
        ]
    return []


def _check_next_prefixes(raw: dict[str, Any]) -> list[CheckMessage]:
    value = raw.get("PORTAL_NEXT_PREFIXES")
    if value is None:
        return []
    if isinstance(value, (list, tuple)) and all(
        isinstance(p, str) and p.startswith("/") and not p.startswith("//") for p in value
    ):
        return []
    return [
        Error(
            f"{_key('PORTAL_NEXT_PREFIXES')} must be None or a list of paths starting "
            "with one '/'.",
            hint='For example ["/invoices/", "/overview"].',
            id=E_NEXT_PREFIXES,
        )
    ]


def _host_list_errors(raw: dict[str, Any], name: str, example: str, id: str) -> list[CheckMessage]:
    value = raw.get(name)
    if value is None:
        return []
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(h, str) and h and "/" not in h for h in value)
    ):
        return []
    return [
        Error(
            f"{_key(name)} must be None or a non-empty list of host names "
            "(a leading '.' matches any subdomain).",
            hint=f"For example {example}.",
            id=id,
        )
    ]


def _check_portal_hosts(raw: dict[str, Any]) -> list[CheckMessage]:
    return _host_list_errors(
        raw,
        "PORTAL_HOSTS",
        '["mybrand.customerportal.energy"] or [".customerportal.energy"]',
        E_PORTAL_HOSTS,
    )


def _check_checkout_hosts(raw: dict[str, Any]) -> list[CheckMessage]:
    return _host_list_errors(
        raw,
        "CHECKOUT_HOSTS",
        '["mybrand.checkout.energy"] or [".checkout.energy"]',
        E_CHECKOUT_HOSTS,
    )


def _check_task_backend(raw: dict[str, Any]) -> list[CheckMessage]:
    if "TASK_BACKEND" not in raw or raw["TASK_BACKEND"] is None:
        return []
    alias = raw["TASK_BACKEND"]
    if not isinstance(alias, str) or not alias:
        return [
            Error(
                f"{_key('TASK_BACKEND')} must be an alias of TASKS or None.",
                hint='For example "default"; None processes webhooks inline.',
                id=E_TASK_BACKEND,
            )
        ]
    from . import tasks

    if not tasks.framework_available():
        return [
            Error(
                f"{_key('TASK_BACKEND')} is set but Django's tasks framework is not installed.",
                hint="Use Django 6.0+, or install nomos-billing[tasks] (the django-tasks backport) "
                "on Django 5.2 and add 'django_tasks' to INSTALLED_APPS.",
                id=E_TASK_BACKEND,
            )
        ]
    configured = getattr(settings, "TASKS", None)
    if not isinstance(configured, dict) or alias not in configured:
        known = ", ".join(sorted(configured)) if isinstance(configured, dict) else "none"
        return [
            Warning(
                f"{_key('TASK_BACKEND')} names the task backend {alias!r}, which TASKS lacks "
                f"(aliases: {known}).",
                hint="Add it to TASKS, or set TASK_BACKEND to one of the aliases there. Until then "
                "every webhook answers 503 and waits for Nomos to redeliver.",
                id=W_TASK_BACKEND_ALIAS,
            )
        ]
    return []


def _check_worker_handoff(raw: dict[str, Any]) -> list[CheckMessage]:
    webhook = _number(raw.get("WEBHOOK_BUDGET")) or DEFAULTS["WEBHOOK_BUDGET"]
    if "WORKER_HANDOFF_TIMEOUT" not in raw:
        # The default gives way to a small budget (conf.Settings.handoff_timeout).
        value: Any = min(DEFAULTS["WORKER_HANDOFF_TIMEOUT"], webhook / 2)
    else:
        value = raw["WORKER_HANDOFF_TIMEOUT"]
    number = _number(value)
    if number is None or not 0 <= number < webhook:
        return [
            Error(
                f"{_key('WORKER_HANDOFF_TIMEOUT')} is {value!r}, not a number of seconds from 0 "
                "up to below WEBHOOK_BUDGET.",
                hint="The webhook view waits this long for a task worker to take an event, then "
                "processes it itself within WEBHOOK_BUDGET; the default is 5, and 0 trusts the "
                "queue (workers that run on a schedule).",
                id=E_WORKER_HANDOFF,
            )
        ]
    if number + webhook >= NOMOS_WEBHOOK_WAIT and raw.get("TASK_BACKEND"):
        return [
            Warning(
                f"{_key('WORKER_HANDOFF_TIMEOUT')} ({number:g} s) and {_key('WEBHOOK_BUDGET')} "
                f"({webhook:g} s) add up to {NOMOS_WEBHOOK_WAIT} s or more: with no worker alive, "
                "a delivery can outlast Nomos' wait for its answer.",
                hint="Keep the two together under 30 s (defaults 5 and 20).",
                id=W_WORKER_HANDOFF,
            )
        ]
    return []


def _check_checkout_url(raw: dict[str, Any]) -> list[CheckMessage]:
    value = raw.get("CHECKOUT_URL")
    if value is None:
        return []
    parts = urlsplit(value) if isinstance(value, str) else None
    host = parts.hostname if parts is not None else None
    # https, or plain http to a sandbox on loopback: the URL carries a signed user reference.
    if (
        parts is not None
        and host
        and not parts.username
        and not parts.password
        and not parts.fragment
        and (parts.scheme == "https" or (parts.scheme == "http" and is_loopback(host)))
    ):
        return []
    return [
        Error(
            f"{_key('CHECKOUT_URL')} must be None or the https URL of the plan's hosted "
            f"checkout, not {value!r}.",
            hint='For example "https://lumio.checkout.energy/" (plain http only for the '
            "sandbox on loopback).",
            id=E_CHECKOUT_URL,
        )
    ]


#: Nomos stops waiting for a webhook's answer after this many seconds.
NOMOS_WEBHOOK_WAIT = 30


def _check_budgets(raw: dict[str, Any]) -> list[CheckMessage]:
    names = ("WEBHOOK_BUDGET", "CLICK_BUDGET", "CLAIM_TIMEOUT")
    bad = [n for n in names if n in raw and not (_number(raw[n]) or 0) > 0]
    if bad:
        return [
            Error(
                f"{' and '.join(_key(n) for n in bad)} must be a number of seconds above 0.",
                hint="The defaults are WEBHOOK_BUDGET 20, CLICK_BUDGET 5 and CLAIM_TIMEOUT 60.",
                id=E_BUDGETS,
            )
        ]
    webhook, click, claim = (float(raw.get(n, DEFAULTS[n])) for n in names)
    messages: list[CheckMessage] = []
    if webhook >= NOMOS_WEBHOOK_WAIT:
        messages.append(
            Warning(
                f"{_key('WEBHOOK_BUDGET')} is {webhook:g} s, but Nomos waits only "
                f"{NOMOS_WEBHOOK_WAIT} s for an answer: a slow delivery is cut off by Nomos (or by "
                "the server's worker timeout) before it can answer 503, and is left in progress.",
                hint="Keep it safely under 30 (the default is 20) and under gunicorn's --timeout.",
                id=W_WEBHOOK_BUDGET,
            )
        )
    if claim <= webhook:
        messages.append(
            Warning(
                f"{_key('CLAIM_TIMEOUT')} ({claim:g} s) is not above {_key('WEBHOOK_BUDGET')} "
                f"({webhook:g} s): a delivery still working on an event can have it taken over by "
                "the next one, and the event is processed twice.",
                hint="Set CLAIM_TIMEOUT to about three times WEBHOOK_BUDGET (default 60 and 20).",
                id=W_CLAIM_TIMEOUT,
            )
        )
    connect = _number(raw.get("TIMEOUT")) or None
    if connect is None:
        try:
            connect = float(raw.get("TIMEOUT", DEFAULTS["TIMEOUT"])[0])
        except (TypeError, ValueError, IndexError, KeyError):
            connect = None
    if connect is not None and min(webhook, click) <= connect:
        name = "CLICK_BUDGET" if click <= webhook else "WEBHOOK_BUDGET"
        messages.append(
            Warning(
                f"{_key(name)} ({min(webhook, click):g} s) is not above the connect timeout of "
                f"{_key('TIMEOUT')} ({connect:g} s): while Nomos cannot be reached, no call fits "
                "the budget and every request gives up before it can connect.",
                hint="Raise the budget or lower the connect timeout (default (3.05, 10) with "
                "CLICK_BUDGET 5).",
                id=W_BUDGET_TIMEOUT,
            )
        )
    return messages


def _check_rate_limits(raw: dict[str, Any]) -> list[CheckMessage]:
    value = raw.get("RATE_LIMITS", {})
    scopes = DEFAULTS["RATE_LIMITS"]
    hint = (
        "A dict of scope -> (requests, seconds), or None to switch a scope off; scopes: "
        + ", ".join(scopes)
        + f". Requests 1-{MAX_RATE_REQUESTS}, seconds 1-{MAX_RATE_WINDOW}. For example "
        '{"portal": (10, 60), "signup": (5, 600)}.'
    )
    if not isinstance(value, dict):
        return [
            Error(
                f"{_key('RATE_LIMITS')} must be a dict, not {value!r}.", hint=hint, id=E_RATE_LIMITS
            )
        ]
    return [
        Error(
            f"{_key('RATE_LIMITS')}[{scope!r}] is {limit!r}"
            + (": not a scope." if scope not in scopes else ", not (requests, seconds) or None."),
            hint=hint,
            id=E_RATE_LIMITS,
        )
        for scope, limit in value.items()
        if scope not in scopes or not (limit is None or is_rate(limit))
    ]


def _check_api_rate_limit(raw: dict[str, Any]) -> list[CheckMessage]:
    value = raw.get("API_RATE_LIMIT", DEFAULTS["API_RATE_LIMIT"])
    number = _number(value)
    if value is None or (number is not None and 0 <= number <= MAX_RATE_REQUESTS):
        return []
    return [
        Error(
            f"{_key('API_RATE_LIMIT')} is {value!r}, not a number of requests per second.",
            hint="Nomos allows 10 requests per second per API client (the default); None or 0 "
            "switches the site's own limiter off.",
            id=E_API_RATE_LIMIT,
        )
    ]


def _check_rate_limit_cache(raw: dict[str, Any]) -> list[CheckMessage]:
    return _check_cache_alias(
        raw,
        "RATE_LIMIT_CACHE",
        E_RATE_LIMIT_CACHE,
        W_RATE_LIMIT_CACHE_LOCAL,
        "The rate-limit cache {alias!r} is a {kind} backend: each worker process counts on its "
        "own, so a user gets RATE_LIMITS once per process.",
        "Point RATE_LIMIT_CACHE at a cache shared by all workers (Redis or Memcached).",
    )


_CHECKS: list[Callable[[dict[str, Any]], list[CheckMessage]]] = [
    _check_unknown_keys,
    _check_credentials,
    _check_webhook_secrets,
    _check_base_url,
    _check_api_version,
    _check_timeout,
    _check_positive_int(
        "WEBHOOK_TOLERANCE",
        E_TOLERANCE,
        1,
        3600,
        "Nomos signs with the send time; 300 (the default) accepts 5 minutes of clock skew. "
        "Zero would reject every delivery.",
    ),
    _check_token_cache,
    _check_positive_int(
        "TOKEN_REFRESH_MARGIN",
        E_REFRESH_MARGIN,
        0,
        3000,
        "Tokens live 3600 s; the default 300 renews them 5 minutes before they expire.",
    ),
    _check_positive_int(
        "WEBHOOK_MAX_BYTES",
        E_MAX_BYTES,
        1024,
        10 * 1024 * 1024,
        "Nomos events are small envelopes; the default is 262144 (256 KiB).",
    ),
    _check_positive_int(
        "EVENT_RETENTION_DAYS",
        E_RETENTION,
        3,
        3650,
        "Nomos retries a delivery for about 3 days; event ids must be kept at least that long "
        "to recognise duplicates. The default is 30.",
    ),
    _check_positive_int(
        "MAX_RETRIES",
        E_RETRIES,
        0,
        10,
        "The default is 3.",
    ),
    _check_positive_int(
        "NOT_FOUND_RETRY_WINDOW",
        E_NOT_FOUND_WINDOW,
        0,
        3 * 24 * 3600,
        "Seconds during which a 404 for a new subscription is retried (Nomos redelivers); "
        "the default 3600 covers a slow checkout, 0 turns it off. Nomos retries for about 3 "
        "days, so a longer window would never end.",
    ),
    _check_positive_int(
        "LINK_CONFIRMATION_DAYS",
        E_CONFIRMATION_DAYS,
        1,
        90,
        "Days the link in a held link's confirmation mail works; the default is 7.",
    ),
    _check_resolvers,
    _check_link_by_email,
    _check_binding,
    _check_site_url,
    _check_next_prefixes,
    _check_portal_hosts,
    _check_checkout_hosts,
    _check_task_backend,
    _check_worker_handoff,
    _check_checkout_url,
    _check_budgets,
    _check_rate_limits,
    _check_rate_limit_cache,
    _check_api_rate_limit,
]


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
                f"{_key('API_BASE_URL')} is {base_url!r}, a sandbox on loopback, with DEBUG off.",
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
                f"{' and '.join(_key(k) for k in sandbox_keys)}: the sandbox's published "
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
                    f"{_key('WEBHOOK_SECRETS')} entry {position} is the sandbox's published "
                    "webhook secret, with DEBUG off: anyone can sign a delivery with it.",
                    hint="Use the signing secret of the endpoint you registered in the Nomos "
                    "dashboard (e.g. NOMOS_WEBHOOK_SECRETS from the environment).",
                    id=E_DEPLOY_SANDBOX_SECRET,
                )
            )
    return messages


def _smtp_without_timeout() -> bool:
    """The site's default mailer is Django's SMTP backend (or a subclass) with no timeout."""
    from django.core.mail.backends.smtp import EmailBackend as SMTPBackend

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
