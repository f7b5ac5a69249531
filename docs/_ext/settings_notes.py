"""What each ``NOMOS_BILLING`` key is for, beside the default the code holds.

The settings reference (``reference/settings``) lists every key of ``conf.DEFAULTS`` with its
default read from the code; the type and notes come from here. A key without notes, or notes
for a key the code no longer has, fails the docs build."""

NOTES: dict[str, tuple[str, str]] = {
    "CLIENT_ID": (
        "str",
        'Required. `env("NOMOS_CLIENT_ID")`',
    ),
    "CLIENT_SECRET": (
        "str",
        'Required. `env("NOMOS_CLIENT_SECRET")`',
    ),
    "WEBHOOK_SECRETS": (
        "list[str] (a str is accepted)",
        (
            'Required. `["whsec_new", "whsec_old"]`: newest first; see *Secret rotation*. Entries'
            ' are stripped and split at commas (`"whsec_new, whsec_old"` is two secrets); a blank'
            " entry, or one under 16 characters unless `API_BASE_URL` is a loopback sandbox, is "
            "never used to verify (check E070 names it by position)"
        ),
    ),
    "API_BASE_URL": (
        "str",
        '`"http://127.0.0.1:8765"` for the sandbox; plain http only on loopback',
    ),
    "API_VERSION": (
        "str",
        "pinned in `X-API-Version`; change only after testing",
    ),
    "TIMEOUT": (
        "(connect, read) seconds, or one number",
        "`(2, 5)`; connect ≤ 30, read ≤ 60",
    ),
    "TOKEN_CACHE": (
        "cache alias",
        '`"nomos"`: a cache shared by all workers, so they share one access token',
    ),
    "TOKEN_REFRESH_MARGIN": (
        "int seconds",
        "renew the token this long before it expires (tokens live 3600 s)",
    ),
    "MAX_RETRIES": (
        "int",
        (
            "retries on connection errors, 429 and 5xx; a POST Nomos may have acted on (5xx, a "
            "timeout after sending) only where a second one is harmless (tokens, portal links), "
            "so `POST /leads` only on 429 and connection errors"
        ),
    ),
    "MAX_RETRY_WAIT": (
        "int seconds",
        (
            "a longer `Retry-After` is not slept through inside a request: `NomosUnavailable` at "
            "once"
        ),
    ),
    "WEBHOOK_BUDGET": (
        "seconds",
        (
            "everything one webhook's processing does with Nomos ends by then (503 and `failed` "
            "if not); keep it under 30 and under your server's worker timeout"
        ),
    ),
    "CLICK_BUDGET": (
        "seconds",
        (
            "the same for a click on the portal button / `portal/link/` / the sign-up form: the "
            "portal or the 503 page within it"
        ),
    ),
    "CLAIM_TIMEOUT": (
        "seconds",
        (
            "a `processing` claim older than this was left by a dead worker and is taken over; "
            "must exceed `WEBHOOK_BUDGET`"
        ),
    ),
    "BREAKER_FAILURES": (
        "int",
        (
            "Nomos failures in a row (connect error, timeout, 5xx, failed token fetch) that open "
            "the outage breaker; `0` switches it off"
        ),
    ),
    "BREAKER_COOLDOWN": (
        "seconds",
        "while open, calls fail at once with `NomosUnavailable`; then one probe decides",
    ),
    "WEBHOOK_TOLERANCE": (
        "int seconds",
        "accepted clock skew of the signature timestamp, both directions",
    ),
    "WEBHOOK_MAX_BYTES": (
        "int",
        "larger bodies get 413 before anything is parsed",
    ),
    "USER_RESOLVERS": (
        "list of dotted paths",
        "first match wins; see *Linking*",
    ),
    "METADATA_USER_KEY": (
        "str",
        (
            "subscription metadata key holding a signed user reference "
            "(`linking.user_reference`), never a bare pk"
        ),
    ),
    "LINK_BY_EMAIL": (
        "bool",
        "`True` only if every account's e-mail address is verified",
    ),
    "BIND_LINKS_TO_EMAIL": (
        "bool",
        (
            "a customer found by lead or signed reference is linked at once only when its Nomos "
            "address is the user's; otherwise the link is held for the customer's mailbox (see "
            "*What linking trusts*). `False` only if your site verifies who signs each contract "
            "itself (W060)"
        ),
    ),
    "LINK_CONFIRMATION_DAYS": (
        "int",
        "how long the link in a held link's confirmation mail works (1-90, E060)",
    ),
    "SITE_URL": (
        "str or None",
        (
            'Default: the `django.contrib.sites` site over https. `"https://example.com"`: your '
            "site's address, for the link in confirmation mails sent while processing a webhook "
            "(W061 when neither is there; E061 for a value that is not an http(s) address)"
        ),
    ),
    "PORTAL_NEXT_PREFIXES": (
        "list[str] or None",
        'Default: any safe path. `["/invoices/", "/overview"]`: allowed `next` pages',
    ),
    "PORTAL_HOSTS": (
        "list[str] or None",
        (
            'Default: any `*.customerportal.energy`. `["mybrand.customerportal.energy"]`: hosts a'
            ' minted link may point at; against the sandbox `[".customerportal.localhost"]`'
        ),
    ),
    "CHECKOUT_HOSTS": (
        "list[str] or None",
        (
            "Default: any `*.checkout.energy`, plus the host of `CHECKOUT_URL`. "
            '`["mybrand.checkout.energy"]`: hosted-checkout hosts a minted link (a customer '
            "without a subscription) or a lead's link may point at; against the sandbox "
            '`[".checkout.localhost"]`. The host alone tells a checkout link from a portal link '
            "(a checkout link never gets `next`). https on port 443 only; against an API on "
            "loopback (the sandbox) http on any port too, on these same hosts"
        ),
    ),
    "SIGNUP_URL": (
        "str or None",
        'where users without a customer are sent, e.g. `"/signup/energy/"`',
    ),
    "PLAN_ID": (
        "str or None",
        '`"pln_..."`: the plan the built-in sign-up form (`portal/start/`) offers',
    ),
    "CHECKOUT_URL": (
        "str or None",
        (
            'the plan\'s hosted checkout, `"https://<plan-slug>.checkout.energy/"`, for '
            "`checkout_url` / `{% nomos_checkout_url %}` (E041: https, or http on loopback)"
        ),
    ),
    "NOT_FOUND_RETRY_WINDOW": (
        "int seconds",
        (
            "a `404` for the subscription of a `subscription.*` event received less than this "
            "long ago answers 503 (Nomos redelivers); after it the event is `failed` for good "
            "(E040; `0` turns it off)"
        ),
    ),
    "EVENT_RETENTION_DAYS": (
        "int",
        "`nomos_prune_events` deletes older webhook events (at least 3)",
    ),
    "BASE_TEMPLATE": (
        "str or None",
        (
            'Default: our own small layout. `"base.html"`: your layout for our pages; it needs '
            "`{% block content %}` (and fills `{% block title %}`)"
        ),
    ),
    "RATE_LIMITS": (
        "dict of scope -> (requests, seconds) or None",
        (
            "per signed-in user; a scope left out keeps its default, `None` switches it off; see "
            "*Per-user limits* (E080)"
        ),
    ),
    "RATE_LIMIT_CACHE": (
        "cache alias",
        (
            "where the per-user counters live; a cache shared by all workers (W080 for a "
            "per-process one; E081 for an alias not in `CACHES`)"
        ),
    ),
    "API_RATE_LIMIT": (
        "requests per second, or None",
        (
            "Default: Nomos' limit per API client. The site's calls to Nomos from all processes "
            "together, counted in `TOKEN_CACHE`, clicks first (webhook processing 80 %, syncs "
            "50 %); `None` or `0` switches our side off (E090). See *One budget for the whole "
            "site*"
        ),
    ),
    "TASK_BACKEND": (
        "alias of `TASKS`, or None",
        (
            'Default: process inline. `"default"`: webhooks are processed by a task worker; see '
            "*Processing on a task worker*"
        ),
    ),
    "WORKER_HANDOFF_TIMEOUT": (
        "seconds",
        (
            "With `TASK_BACKEND`: how long the webhook view waits for evidence that a worker is "
            "alive before it answers 202 (a worker that ran one of our jobs that recently, or "
            "one that claims the event meanwhile); without it the view processes the event "
            "itself. `0` trusts the queue, for workers that run on a schedule (E031; W031 when "
            "it and `WEBHOOK_BUDGET` add up to Nomos' 30 s)"
        ),
    ),
}
