"""What each ``NOMOS_BILLING`` key is for.

The settings reference (``reference/settings``) lists every key of ``settings_table.TABLE``
with its type, default and check id read from the code; the notes come from here. A key
without notes, or notes for a key the code no longer has, fails the docs build."""

NOTES: dict[str, str] = {
    "CLIENT_ID": 'Required. `env("NOMOS_CLIENT_ID")`',
    "CLIENT_SECRET": 'Required. `env("NOMOS_CLIENT_SECRET")`',
    "WEBHOOK_SECRETS": (
        'Required. `["whsec_new", "whsec_old"]`: newest first; see *Secret rotation*. Entries'
        ' are stripped and split at commas (`"whsec_new, whsec_old"` is two secrets); a blank'
        " entry, or one under 16 characters unless `API_BASE_URL` is a loopback sandbox, is "
        "never used to verify (check E070 names it by position)"
    ),
    "API_BASE_URL": '`"http://127.0.0.1:8765"` for the sandbox; plain http only on loopback',
    "API_VERSION": "pinned in `X-API-Version`; change only after testing",
    "TIMEOUT": "`(2, 5)`; connect ≤ 30, read ≤ 60",
    "TOKEN_CACHE": '`"nomos"`: a cache shared by all workers, so they share one access token',
    "TOKEN_REFRESH_MARGIN": "renew the token this long before it expires (tokens live 3600 s)",
    "MAX_RETRIES": (
        "retries on connection errors, 429 and 5xx; a POST Nomos may have acted on (5xx, a "
        "timeout after sending) only where a second one is harmless (tokens, portal links), "
        "so `POST /leads` only on 429 and connection errors"
    ),
    "MAX_RETRY_WAIT": (
        "a longer `Retry-After` is not slept through inside a request: `NomosUnavailable` at once"
    ),
    "WEBHOOK_BUDGET": (
        "everything one webhook's processing does with Nomos ends by then (503 and `failed` "
        "if not); keep it under 30 and under your server's worker timeout"
    ),
    "CLICK_BUDGET": (
        "the same for a click on the portal button / `portal/link/` / the sign-up form: the "
        "portal or the 503 page within it"
    ),
    "CLAIM_TIMEOUT": (
        "a `processing` claim older than this was left by a dead worker and is taken over; "
        "must exceed `WEBHOOK_BUDGET`"
    ),
    "BREAKER_FAILURES": (
        "Nomos failures in a row (connect error, timeout, 5xx, failed token fetch) that open "
        "the outage breaker; `0` switches it off"
    ),
    "BREAKER_COOLDOWN": (
        "while open, calls fail at once with `NomosUnavailable`; then one probe decides"
    ),
    "WEBHOOK_TOLERANCE": "accepted clock skew of the signature timestamp, both directions",
    "WEBHOOK_MAX_BYTES": "larger bodies get 413 before anything is parsed",
    "USER_RESOLVERS": (
        "first match wins; see *Linking*"
    ),
    "METADATA_USER_KEY": (
        "subscription metadata key holding a signed user reference "
        "(`linking.user_reference`), never a bare pk"
    ),
    "LINK_BY_EMAIL": "`True` only if every account's e-mail address is verified",
    "BIND_LINKS_TO_EMAIL": (
        "a customer found by lead or signed reference is linked at once only when its Nomos "
        "address is the user's; otherwise the link is held for the customer's mailbox (see "
        "*What linking trusts*). `False` only if your site verifies who signs each contract "
        "itself (W060)"
    ),
    "LINK_CONFIRMATION_DAYS": (
        "how long the link in a held link's confirmation mail works (1-90, E060)"
    ),
    "SITE_URL": (
        'Default: the `django.contrib.sites` site over https. `"https://example.com"`: your '
        "site's address, for the link in confirmation mails sent while processing a webhook "
        "(W061 when neither is there; E061 for a value that is not an http(s) address)"
    ),
    "PORTAL_NEXT_PREFIXES": (
        'Default: any safe path. `["/invoices/", "/overview"]`: allowed `next` pages'
    ),
    "PORTAL_HOSTS": (
        'Default: any `*.customerportal.energy`. `["mybrand.customerportal.energy"]`: hosts a'
        ' minted link may point at; against the sandbox `[".customerportal.localhost"]`'
    ),
    "CHECKOUT_HOSTS": (
        "Default: any `*.checkout.energy`, plus the host of `CHECKOUT_URL`. "
        '`["mybrand.checkout.energy"]`: hosted-checkout hosts a minted link (a customer '
        "without a subscription) or a lead's link may point at; against the sandbox "
        '`[".checkout.localhost"]`. The host alone tells a checkout link from a portal link '
        "(a checkout link never gets `next`). https on port 443 only; against an API on "
        "loopback (the sandbox) http on any port too, on these same hosts"
    ),
    "SIGNUP_URL": 'where users without a customer are sent, e.g. `"/signup/energy/"`',
    "PLAN_ID": '`"pln_..."`: the plan the built-in sign-up form (`portal/start/`) offers',
    "CHECKOUT_URL": (
        'the plan\'s hosted checkout, `"https://<plan-slug>.checkout.energy/"`, for '
        "`checkout_url` / `{% nomos_checkout_url %}` (E041: https, or http on loopback)"
    ),
    "NOT_FOUND_RETRY_WINDOW": (
        "a `404` for the subscription of a `subscription.*` event received less than this "
        "long ago answers 503 (Nomos redelivers); after it the event is `failed` for good "
        "(E040; `0` turns it off)"
    ),
    "EVENT_RETENTION_DAYS": "`nomos_prune_events` deletes older webhook events (at least 3)",
    "BASE_TEMPLATE": (
        'Default: our own small layout. `"base.html"`: your layout for our pages; it needs '
        "`{% block content %}` (and fills `{% block title %}`)"
    ),
    "RATE_LIMITS": (
        "per signed-in user; a scope left out keeps its default, `None` switches it off; see "
        "*Per-user limits* (E080)"
    ),
    "RATE_LIMIT_CACHE": (
        "where the per-user counters live; a cache shared by all workers (W080 for a "
        "per-process one; E081 for an alias not in `CACHES`)"
    ),
    "API_RATE_LIMIT": (
        "Default: Nomos' limit per API client. The site's calls to Nomos from all processes "
        "together, counted in `TOKEN_CACHE`, clicks first (webhook processing 80 %, syncs "
        "50 %); `None` or `0` switches our side off (E090). See *One budget for the whole "
        "site*"
    ),
    "TASK_BACKEND": (
        'Default: process inline. `"default"`: webhooks are processed by a task worker; see '
        "*Processing on a task worker*"
    ),
    "WORKER_HANDOFF_TIMEOUT": (
        "With `TASK_BACKEND`: how long the webhook view waits for evidence that a worker is "
        "alive before it answers 202 (a worker that ran one of our jobs that recently, or "
        "one that claims the event meanwhile); without it the view processes the event "
        "itself. `0` trusts the queue, for workers that run on a schedule (E031; W031 when "
        "it and `WEBHOOK_BUDGET` add up to Nomos' 30 s)"
    ),
}
