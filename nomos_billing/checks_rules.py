"""The checks beyond one key's own value: rules that span keys (budgets, the worker handoff),
that look at the rest of the site (caches, task backends, resolvers, installed apps), and the
warnings about values that are valid but risky. Each rule gets ``NOMOS_BILLING`` as written,
every key as the run time reads it, and the keys the table loop already found wrong."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.utils.module_loading import import_string

from . import tasks
from .conf import key
from .setting_parsers import (
    API_VERSION,
    MAX_RATE_REQUESTS,
    MAX_RATE_WINDOW,
    is_loopback,
    is_rate,
)

E_CREDENTIALS = "nomos_billing.E001"
E_BASE_URL = "nomos_billing.E004"
E_TOKEN_CACHE = "nomos_billing.E007"
E_RESOLVERS = "nomos_billing.E010"
W_TOKEN_CACHE_LOCAL = "nomos_billing.W001"
W_LINK_BY_EMAIL = "nomos_billing.W002"
W_API_VERSION = "nomos_billing.W004"
W_HTTP_BASE_URL = "nomos_billing.W005"
# Task backend ids start at 30, clear of the ones above as they grow.
E_TASK_BACKEND = "nomos_billing.E030"
W_TASK_BACKEND_ALIAS = "nomos_billing.W030"
E_WORKER_HANDOFF = "nomos_billing.E031"
W_WORKER_HANDOFF = "nomos_billing.W031"
# Time budgets start at 50.
W_WEBHOOK_BUDGET = "nomos_billing.W050"
W_CLAIM_TIMEOUT = "nomos_billing.W051"
W_BUDGET_TIMEOUT = "nomos_billing.W052"
# Linking and its confirmation mails start at 60.
W_UNBOUND_LINKS = "nomos_billing.W060"
W_NO_SITE_URL = "nomos_billing.W061"
# Per-user rate limits start at 80.
E_RATE_LIMITS = "nomos_billing.E080"
E_RATE_LIMIT_CACHE = "nomos_billing.E081"
W_RATE_LIMIT_CACHE_LOCAL = "nomos_billing.W080"

#: Nomos stops waiting for a webhook's answer after this many seconds.
NOMOS_WEBHOOK_WAIT = 30

_LOCAL_CACHE_BACKENDS = {
    "django.core.cache.backends.locmem.LocMemCache": "per-process",
    "django.core.cache.backends.dummy.DummyCache": "dummy",
}

Messages = list[CheckMessage]
#: A rule gets NOMOS_BILLING as written, every key as the run time reads it, and the keys the
#: table loop found wrong.
Rule = Callable[[dict[str, Any], dict[str, Any], set[str]], Messages]


def _credentials(raw: dict[str, Any], values: dict[str, Any], bad: set[str]) -> Messages:
    missing = [k for k in ("CLIENT_ID", "CLIENT_SECRET") if not raw.get(k)]
    if not missing:
        return []
    return [
        Error(
            f"{' and '.join(key(k) for k in missing)} not set: nomos_billing cannot call the "
            "Nomos API.",
            hint="Create API credentials in the Nomos dashboard and set CLIENT_ID and "
            "CLIENT_SECRET (e.g. from the environment). For local development, run the sandbox "
            "(python -m nomos_billing.sandbox) and use the credentials it prints.",
            id=E_CREDENTIALS,
        )
    ]


def _plain_http(raw: dict[str, Any], values: dict[str, Any], bad: set[str]) -> Messages:
    parts = urlsplit(values["API_BASE_URL"])
    if parts.scheme != "http" or is_loopback(parts.hostname):
        return []
    hint = (
        "Use https: the client secret and access tokens would travel in clear text. "
        "Plain http is only for a sandbox on loopback (127.0.0.1, localhost)."
    )
    if settings.DEBUG:
        return [Warning(f"{key('API_BASE_URL')} uses plain http.", hint=hint, id=W_HTTP_BASE_URL)]
    return [
        Error(f"{key('API_BASE_URL')} uses plain http outside DEBUG.", hint=hint, id=E_BASE_URL)
    ]


def _api_version(raw: dict[str, Any], values: dict[str, Any], bad: set[str]) -> Messages:
    value = values["API_VERSION"]
    if value == API_VERSION:
        return []
    return [
        Warning(
            f"{key('API_VERSION')} is {value!r}; this release of nomos_billing is built and "
            f"tested against {API_VERSION!r}.",
            hint=f'Remove the key or set it to "{API_VERSION}" unless you have tested the other '
            "version.",
            id=W_API_VERSION,
        )
    ]


def _cache_alias(
    values: dict[str, Any], name: str, error_id: str, warning_id: str, local: str, hint: str
) -> Messages:
    """``name`` must be an alias in ``CACHES``; outside ``DEBUG``, a per-process one is worth a
    warning (``local`` says what it costs, ``{kind}`` naming the backend)."""
    alias = values[name]
    caches = getattr(settings, "CACHES", {})
    if alias not in caches:
        return [
            Error(
                f"{key(name)} is {alias!r}, which is not an alias in CACHES.",
                hint=f"Use one of: {', '.join(sorted(caches)) or '(no caches configured)'}.",
                id=error_id,
            )
        ]
    kind = _LOCAL_CACHE_BACKENDS.get(caches[alias].get("BACKEND", ""))
    if kind and not settings.DEBUG:
        return [Warning(local.format(alias=alias, kind=kind), hint=hint, id=warning_id)]
    return []


def _token_cache(raw: dict[str, Any], values: dict[str, Any], bad: set[str]) -> Messages:
    backend = getattr(settings, "CACHES", {}).get(values["TOKEN_CACHE"], {})
    dummy = _LOCAL_CACHE_BACKENDS.get(backend.get("BACKEND", "")) == "dummy"
    return _cache_alias(
        values,
        "TOKEN_CACHE",
        E_TOKEN_CACHE,
        W_TOKEN_CACHE_LOCAL,
        "The token cache {alias!r} is a {kind} backend: every worker process fetches its own "
        "Nomos access token" + (" on every call." if dummy else "."),
        "Point TOKEN_CACHE at a cache shared by all workers (Redis, Memcached or the database "
        "cache) so that they share one token.",
    )


def _rate_limit_cache(raw: dict[str, Any], values: dict[str, Any], bad: set[str]) -> Messages:
    return _cache_alias(
        values,
        "RATE_LIMIT_CACHE",
        E_RATE_LIMIT_CACHE,
        W_RATE_LIMIT_CACHE_LOCAL,
        "The rate-limit cache {alias!r} is a {kind} backend: each worker process counts on its "
        "own, so a user gets RATE_LIMITS once per process.",
        "Point RATE_LIMIT_CACHE at a cache shared by all workers (Redis or Memcached).",
    )


def _resolvers(raw: dict[str, Any], values: dict[str, Any], bad: set[str]) -> Messages:
    messages: Messages = []
    for path in values["USER_RESOLVERS"]:
        try:
            import_string(path)
        except ImportError as exc:
            messages.append(
                Error(
                    f"{key('USER_RESOLVERS')} lists {path!r}, which cannot be imported ({exc}).",
                    hint="Each entry is the dotted path of a callable taking a "
                    "nomos_billing.linking.LinkRequest and returning a user or None.",
                    id=E_RESOLVERS,
                )
            )
    return messages


def _link_by_email(raw: dict[str, Any], values: dict[str, Any], bad: set[str]) -> Messages:
    if not values["LINK_BY_EMAIL"]:
        return []
    return [
        Warning(
            f"{key('LINK_BY_EMAIL')} is on: a Nomos customer is linked to the site user with the "
            "same e-mail address. If your site does not verify e-mail addresses, anyone can sign "
            "up with a customer's address and take over their portal access.",
            hint="Only enable it when every account's e-mail address is verified; prefer the "
            "metadata or lead resolvers. Silence this check once you have made sure.",
            id=W_LINK_BY_EMAIL,
        )
    ]


def _binding(raw: dict[str, Any], values: dict[str, Any], bad: set[str]) -> Messages:
    if values["BIND_LINKS_TO_EMAIL"]:
        return []
    return [
        Warning(
            f"{key('BIND_LINKS_TO_EMAIL')} is False: a Nomos customer found by a lead or a "
            "signed checkout link is linked to that link's user even when the customer's e-mail "
            "address is someone else's. Whoever forwards their checkout link to another person "
            "gets that person's contract, address and bank details in their portal.",
            hint="Keep the default True unless your site verifies who signs each contract "
            "itself; silence this check once you have made sure.",
            id=W_UNBOUND_LINKS,
        )
    ]


def _site_url(raw: dict[str, Any], values: dict[str, Any], bad: set[str]) -> Messages:
    if values["SITE_URL"] is not None or "SITE_URL" in bad:
        return []
    if "django.contrib.sites" in settings.INSTALLED_APPS:
        return []
    return [
        Warning(
            f"{key('SITE_URL')} is not set and django.contrib.sites is not installed: "
            "a held link's confirmation mail sent while processing a webhook has no "
            "address of this site to link to, so it is not sent.",
            hint='Set it to the address users reach your site at, e.g. "https://example.com".',
            id=W_NO_SITE_URL,
        )
    ]


def _task_backend(raw: dict[str, Any], values: dict[str, Any], bad: set[str]) -> Messages:
    alias = values["TASK_BACKEND"]
    if alias is None:
        return []
    if not tasks.framework_available():
        return [
            Error(
                f"{key('TASK_BACKEND')} is set but Django's tasks framework is not installed.",
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
                f"{key('TASK_BACKEND')} names the task backend {alias!r}, which TASKS lacks "
                f"(aliases: {known}).",
                hint="Add it to TASKS, or set TASK_BACKEND to one of the aliases there. Until then "
                "every webhook answers 503 and waits for Nomos to redeliver.",
                id=W_TASK_BACKEND_ALIAS,
            )
        ]
    return []


def _worker_handoff(raw: dict[str, Any], values: dict[str, Any], bad: set[str]) -> Messages:
    if "WORKER_HANDOFF_TIMEOUT" in bad:
        return []
    webhook: float = values["WEBHOOK_BUDGET"]
    # Left out, the default gives way to a small budget (conf.Settings.handoff_timeout).
    given = "WORKER_HANDOFF_TIMEOUT" in raw
    number: float = values["WORKER_HANDOFF_TIMEOUT"] if given else min(5.0, webhook / 2)
    if not number < webhook:
        return [
            Error(
                f"{key('WORKER_HANDOFF_TIMEOUT')} is {raw['WORKER_HANDOFF_TIMEOUT']!r}, not a "
                "number of seconds from 0 up to below WEBHOOK_BUDGET.",
                hint="The webhook view waits this long for a task worker to take an event, then "
                "processes it itself within WEBHOOK_BUDGET; the default is 5, and 0 trusts the "
                "queue (workers that run on a schedule).",
                id=E_WORKER_HANDOFF,
            )
        ]
    if number + webhook >= NOMOS_WEBHOOK_WAIT and values["TASK_BACKEND"]:
        return [
            Warning(
                f"{key('WORKER_HANDOFF_TIMEOUT')} ({number:g} s) and {key('WEBHOOK_BUDGET')} "
                f"({webhook:g} s) add up to {NOMOS_WEBHOOK_WAIT} s or more: with no worker alive, "
                "a delivery can outlast Nomos' wait for its answer.",
                hint="Keep the two together under 30 s (defaults 5 and 20).",
                id=W_WORKER_HANDOFF,
            )
        ]
    return []


def _budgets(raw: dict[str, Any], values: dict[str, Any], bad: set[str]) -> Messages:
    webhook, click, claim = (values[n] for n in ("WEBHOOK_BUDGET", "CLICK_BUDGET", "CLAIM_TIMEOUT"))
    messages: Messages = []
    if webhook >= NOMOS_WEBHOOK_WAIT:
        messages.append(
            Warning(
                f"{key('WEBHOOK_BUDGET')} is {webhook:g} s, but Nomos waits only "
                f"{NOMOS_WEBHOOK_WAIT} s for an answer: a slow delivery is cut off by Nomos (or by "
                "the server's worker timeout) before it can answer 503, and is left in progress.",
                hint="Keep it safely under 30 (the default is 20) and under gunicorn's --timeout.",
                id=W_WEBHOOK_BUDGET,
            )
        )
    if claim <= webhook:
        messages.append(
            Warning(
                f"{key('CLAIM_TIMEOUT')} ({claim:g} s) is not above {key('WEBHOOK_BUDGET')} "
                f"({webhook:g} s): a delivery still working on an event can have it taken over by "
                "the next one, and the event is processed twice.",
                hint="Set CLAIM_TIMEOUT to about three times WEBHOOK_BUDGET (default 60 and 20).",
                id=W_CLAIM_TIMEOUT,
            )
        )
    connect = values["TIMEOUT"][0]
    if min(webhook, click) <= connect:
        name = "CLICK_BUDGET" if click <= webhook else "WEBHOOK_BUDGET"
        messages.append(
            Warning(
                f"{key(name)} ({min(webhook, click):g} s) is not above the connect timeout of "
                f"{key('TIMEOUT')} ({connect:g} s): while Nomos cannot be reached, no call fits "
                "the budget and every request gives up before it can connect.",
                hint="Raise the budget or lower the connect timeout (default (3.05, 10) with "
                "CLICK_BUDGET 5).",
                id=W_BUDGET_TIMEOUT,
            )
        )
    return messages


def _rate_limits(raw: dict[str, Any], values: dict[str, Any], bad: set[str]) -> Messages:
    """Each scope on its own (the table loop refused what is not a dict at all)."""
    if "RATE_LIMITS" in bad:
        return []
    scopes = values["RATE_LIMITS"]
    hint = (
        "A dict of scope -> (requests, seconds), or None to switch a scope off; scopes: "
        + ", ".join(scopes)
        + f". Requests 1-{MAX_RATE_REQUESTS}, seconds 1-{MAX_RATE_WINDOW}. For example "
        '{"portal": (10, 60), "signup": (5, 600)}.'
    )
    return [
        Error(
            f"{key('RATE_LIMITS')}[{scope!r}] is {limit!r}"
            + (": not a scope." if scope not in scopes else ", not (requests, seconds) or None."),
            hint=hint,
            id=E_RATE_LIMITS,
        )
        for scope, limit in raw.get("RATE_LIMITS", {}).items()
        if scope not in scopes or not (limit is None or is_rate(limit))
    ]


RULES: list[Rule] = [
    _credentials,
    _plain_http,
    _api_version,
    _token_cache,
    _resolvers,
    _link_by_email,
    _binding,
    _site_url,
    _task_backend,
    _worker_handoff,
    _budgets,
    _rate_limits,
    _rate_limit_cache,
]
