"""Every ``NOMOS_BILLING`` key, declared once: its default, how a written value is read and
normalised, the check id that explains a wrong one, and the hint that says what to write.

``conf.py`` reads settings through this table (a wrong value falls back to the default),
``checks`` validates through it (a wrong value is the key's check message), and the docs'
settings reference is generated from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .setting_parsers import (
    API_VERSION,
    DEFAULT_RATE_LIMITS,
    PRODUCTION_URL,
    Parser,
    api_rate,
    boolean,
    checkout_url,
    checkout_url_text,
    dotted_paths,
    host_names,
    http_url,
    non_empty_text,
    number,
    optional,
    path_prefixes,
    prefix_list,
    rate_limits,
    secrets,
    strict_host_names,
    text,
    timeout,
    whole,
)

# The id of a key that has none of its own: a wrong type or a value out of bounds.
E_SETTING_VALUE = "nomos_billing.E015"


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Parser
    #: The type as the docs show it.
    type: str
    check_id: str = E_SETTING_VALUE
    hint: str = ""
    #: Never put the value into a message or a log line.
    secret: bool = False
    #: What the checks accept, where it is stricter than what the run time makes do with.
    strict: Parser | None = None


def _s(name: str, default: Any, parse: Parser, type: str, check_id: str = "", **kw: Any) -> Setting:
    return Setting(name, default, parse, type, check_id or E_SETTING_VALUE, **kw)


TABLE: tuple[Setting, ...] = (
    _s("CLIENT_ID", "", text, "str"),
    _s("CLIENT_SECRET", "", text, "str", secret=True),
    # Newest first. A single string is accepted and treated as a one-item list.
    _s(
        "WEBHOOK_SECRETS",
        [],
        secrets,
        "list[str] (a str is accepted)",
        "nomos_billing.E002",
        secret=True,
    ),
    _s(
        "API_BASE_URL",
        PRODUCTION_URL,
        http_url,
        "str",
        "nomos_billing.E004",
        hint='Use "https://api.nomos.energy", or the sandbox\'s URL in development.',
    ),
    _s("API_VERSION", API_VERSION, non_empty_text, "str"),
    _s(
        "TIMEOUT",
        (3.05, 10.0),
        timeout,
        "(connect, read) seconds, or one number",
        "nomos_billing.E005",
        hint='For example "TIMEOUT": (3.05, 10). A web worker waiting longer than that for '
        "Nomos is an outage of your site.",
    ),
    _s("TOKEN_CACHE", "default", non_empty_text, "cache alias", "nomos_billing.E007"),
    # Renew the token when less than this many seconds of its life are left.
    _s(
        "TOKEN_REFRESH_MARGIN",
        300,
        whole(0, 3000),
        "int seconds",
        "nomos_billing.E008",
        hint="Tokens live 3600 s; the default 300 renews them 5 minutes before they expire.",
    ),
    # How many times 429/5xx/connection failures are retried, and the longest Retry-After we
    # are willing to sleep through inside a web request before giving up with NomosUnavailable.
    _s("MAX_RETRIES", 3, whole(0, 10), "int", "nomos_billing.E014", hint="The default is 3."),
    _s("MAX_RETRY_WAIT", 5, number(0, 60), "int seconds", hint="The default is 5."),
    _s(
        "WEBHOOK_TOLERANCE",
        300,
        whole(1, 3600),
        "int seconds",
        "nomos_billing.E006",
        hint="Nomos signs with the send time; 300 (the default) accepts 5 minutes of clock "
        "skew. Zero would reject every delivery.",
    ),
    _s(
        "WEBHOOK_MAX_BYTES",
        256 * 1024,
        whole(1024, 10 * 1024 * 1024),
        "int",
        "nomos_billing.E009",
        hint="Nomos events are small envelopes; the default is 262144 (256 KiB).",
    ),
    # Lead first: it trusts only our own database. Metadata links only a signed reference
    # (linking.user_reference); e-mail is off unless LINK_BY_EMAIL.
    _s(
        "USER_RESOLVERS",
        [
            "nomos_billing.linking.by_lead",
            "nomos_billing.linking.by_metadata",
            "nomos_billing.linking.by_email",
        ],
        dotted_paths,
        "list of dotted paths",
        "nomos_billing.E010",
        hint='For example ["nomos_billing.linking.by_lead", "nomos_billing.linking.by_metadata"].',
    ),
    _s("METADATA_USER_KEY", "django_user_id", non_empty_text, "str"),
    _s("LINK_BY_EMAIL", False, boolean, "bool", hint="The default is False."),
    # A customer found by lead or signed reference is linked at once only when its Nomos
    # e-mail address is the user's (addresses.same_address); otherwise the link is held until
    # the customer's mailbox confirms it (confirmation.py). False trusts whoever handed out
    # the checkout link: only for sites that verify identity themselves (W060).
    _s("BIND_LINKS_TO_EMAIL", True, boolean, "bool", hint="The default is True."),
    _s(
        "LINK_CONFIRMATION_DAYS",
        7,
        whole(1, 90),
        "int",
        "nomos_billing.E060",
        hint="Days the link in a held link's confirmation mail works; the default is 7.",
    ),
    # The site's own address for links in mails sent outside a request (a webhook processed on
    # a worker); None: django.contrib.sites' current site.
    _s(
        "SITE_URL",
        None,
        optional(http_url),
        "str or None",
        "nomos_billing.E061",
        hint='For example "https://example.com" (no path needed).',
    ),
    _s(
        "PORTAL_NEXT_PREFIXES",
        None,
        optional(prefix_list),
        "list[str] or None",
        "nomos_billing.E011",
        strict=optional(path_prefixes),
        hint='For example ["/invoices/", "/overview"].',
    ),
    _s(
        "PORTAL_HOSTS",
        None,
        optional(host_names),
        "list[str] or None",
        "nomos_billing.E013",
        strict=optional(strict_host_names),
        hint='For example ["mybrand.customerportal.energy"] or [".customerportal.energy"].',
    ),
    # Hosts of Nomos' hosted checkout (None: *.checkout.energy and CHECKOUT_URL's).
    _s(
        "CHECKOUT_HOSTS",
        None,
        optional(host_names),
        "list[str] or None",
        "nomos_billing.E042",
        strict=optional(strict_host_names),
        hint='For example ["mybrand.checkout.energy"] or [".checkout.energy"].',
    ),
    _s("SIGNUP_URL", None, optional(text), "str or None"),
    _s("PLAN_ID", None, optional(text), "str or None"),
    _s(
        "CHECKOUT_URL",
        None,
        optional(checkout_url_text),
        "str or None",
        "nomos_billing.E041",
        strict=optional(checkout_url),
        hint='For example "https://lumio.checkout.energy/" (plain http only for the sandbox on '
        "loopback).",
    ),
    _s(
        "EVENT_RETENTION_DAYS",
        30,
        whole(3, 3650),
        "int",
        "nomos_billing.E012",
        hint="Nomos retries a delivery for about 3 days; event ids must be kept at least that "
        "long to recognise duplicates. The default is 30.",
    ),
    _s("BASE_TEMPLATE", None, optional(text), "str or None"),
    # Time budgets (seconds) for everything one request does with Nomos (budget.py).
    _s(
        "WEBHOOK_BUDGET",
        20,
        number(0, 3600, above=True),
        "seconds",
        "nomos_billing.E050",
        hint="The defaults are WEBHOOK_BUDGET 20, CLICK_BUDGET 5 and CLAIM_TIMEOUT 60.",
    ),
    _s(
        "CLICK_BUDGET",
        5,
        number(0, 3600, above=True),
        "seconds",
        "nomos_billing.E050",
        hint="The defaults are WEBHOOK_BUDGET 20, CLICK_BUDGET 5 and CLAIM_TIMEOUT 60.",
    ),
    # A processing claim older than this was left by a dead worker and may be taken over.
    _s(
        "CLAIM_TIMEOUT",
        60,
        number(0, 24 * 3600, above=True),
        "seconds",
        "nomos_billing.E050",
        hint="The defaults are WEBHOOK_BUDGET 20, CLICK_BUDGET 5 and CLAIM_TIMEOUT 60.",
    ),
    # The outage breaker (breaker.py); 0 failures switches it off.
    _s("BREAKER_FAILURES", 5, whole(0, 1000), "int", hint="The default is 5; 0 switches it off."),
    _s("BREAKER_COOLDOWN", 10, number(0, 3600, above=True), "seconds", hint="The default is 10."),
    _s(
        "TASK_BACKEND",
        None,
        optional(non_empty_text),
        "alias of `TASKS`, or None",
        "nomos_billing.E030",
        hint='For example "default"; None processes webhooks inline.',
    ),
    # With TASK_BACKEND: seconds the webhook view waits for a worker before it processes the
    # event itself (workers.py); the bound against WEBHOOK_BUDGET is checks' cross-key rule.
    _s(
        "WORKER_HANDOFF_TIMEOUT",
        5,
        number(0, 3600),
        "seconds",
        "nomos_billing.E031",
        hint="The default is 5, and 0 trusts the queue (workers that run on a schedule).",
    ),
    _s(
        "NOT_FOUND_RETRY_WINDOW",
        3600,
        whole(0, 3 * 24 * 3600),
        "int seconds",
        "nomos_billing.E040",
        hint="Seconds during which a 404 for a new subscription is retried (Nomos "
        "redelivers); the default 3600 covers a slow checkout, 0 turns it off. Nomos retries "
        "for about 3 days, so a longer window would never end.",
    ),
    _s(
        "RATE_LIMITS",
        DEFAULT_RATE_LIMITS,
        rate_limits,
        "dict of scope -> (requests, seconds) or None",
        "nomos_billing.E080",
    ),
    _s("RATE_LIMIT_CACHE", "default", non_empty_text, "cache alias", "nomos_billing.E081"),
    _s(
        "API_RATE_LIMIT",
        10,
        api_rate,
        "requests per second, or None",
        "nomos_billing.E090",
        hint="Nomos allows 10 requests per second per API client (the default); None or 0 "
        "switches the site's own limiter off.",
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in TABLE}
