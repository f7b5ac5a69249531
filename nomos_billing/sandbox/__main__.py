"""``python -m nomos_billing.sandbox``: a seeded fake Nomos in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from . import seed
from .forwarding import RETRIES, Forwarder
from .hosts import checkout_origin
from .ratelimit import NOMOS_RATE_LIMIT
from .seeding import seed_subscriptions, seeded
from .server import SandboxServer
from .state import Sandbox
from .stores import DEFAULT_PLAN, UNSERVICEABLE_ZIP
from .tokens import TOKEN_BODIES

#: The control API, in one place: ``--help``, the startup banner and the README's table say this.
CONTROL_API = (
    """\
control API (loopback tooling, no auth; not counted in GET /_sandbox/calls):
  GET    /_sandbox/state                      customers, subscriptions, leads, events, sessions
  GET    /_sandbox/calls                      API calls counted per endpoint
  POST   /_sandbox/reset                      forget counts, faults and the rate limit's
                                              record (not the data)
  GET    /_sandbox/faults                     faults still armed
  POST   /_sandbox/faults                     arm one: {"key": "GET /subscriptions/{id}" | "*",
                                              "status": 429, "retry_after": null, "latency": 0,
                                              "hang": null, "drop_connection": false,
                                              "ignore_filters": false,
                                              "drop_cursor": false, "times": 1}
  DELETE /_sandbox/faults                     disarm all
  POST   /_sandbox/seed                       {"subscriptions": N}: hold N numbered customers
                                              with one subscription each (adds the missing)
  POST   /_sandbox/customers                  add a customer {"email", "first_name", ...}
  POST   /_sandbox/subscriptions              add a subscription {"customer_id", "status", ...}
  POST   /_sandbox/subscriptions/{id}/status  {"status": "active"|"ended"|"pending",
                                              "topic": optional}; fires subscription.activated
                                              / .ended (or "topic") to --forward-to
  POST   /_sandbox/subscriptions/unreadable  fault {"seconds": N}: new subscriptions answer 404
                                              for their first N seconds (--unreadable-for)
  POST   /_sandbox/subscriptions/{id}/readable  end that window for one subscription now
  POST   /_sandbox/leads/{id}/convert         finish a lead's checkout; fires subscription.created
  POST   /_sandbox/events                     fire {"topic", "context"} (or {"topic",
                                              "subscription"}: ids filled in) to --forward-to
  GET    /_sandbox/deliveries                 what --forward-to delivered (status, attempt)
  POST   /_sandbox/webhooks                   send one signed event to {"url", "topic", ...}
  GET    /_sandbox/clock                      Nomos' clock: {"clock_skew", "now"}
  POST   /_sandbox/clock                      {"skew": SECONDS}: Nomos' clock ahead (or,
                                              negative, behind) ours (--clock-skew)
  GET    /_sandbox/rate-limit                 the limit and its record: {"limit", "requests",
                                              "refused" (answered 429), "busiest_second"}
  POST   /_sandbox/rate-limit                 {"limit": N}: N requests/s from now on (0: off)
  POST   /_sandbox/tokens                     a valid access token
  POST   /_sandbox/tokens/expire              expire every issued token
pages, on their own hosts under .localhost (browsers resolve them to loopback; a site accepts
them with NOMOS_BILLING PORTAL_HOSTS [".customerportal.localhost"] and CHECKOUT_HOSTS
[".checkout.localhost"]), on this port:
  GET    <plan-slug>.checkout.localhost/?zip=&usage=&metadata.<key>=&id=lead_...
                                              the plan's hosted checkout (pln_x: pln-x)
  GET    sandbox.customerportal.localhost/auth/confirm?token_hash=...   the portal sign-in
business errors: POST /leads and the checkout refuse postcode """
    + UNSERVICEABLE_ZIP
    + """ \
(unserviceable_zip)
"""
)


def _return_url(value: str) -> tuple[str, str]:
    plan, sep, url = value.partition("=")
    if sep and not plan.startswith(("http:", "https:")):
        return plan, url
    return "*", value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nomos_billing.sandbox",
        description="Run a local fake of the Nomos API, its hosted checkout and portal sign-in.",
        epilog=CONTROL_API,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--client-id", default="sandbox-client")
    parser.add_argument("--client-secret", default="sandbox-secret")
    parser.add_argument(
        "--webhook-secret",
        default="sandbox-webhook-secret",
        help="signing secret for --forward-to and POST /_sandbox/webhooks",
    )
    parser.add_argument("--scope", default="read:* write:*")
    parser.add_argument("--token-ttl", type=float, default=3600)
    parser.add_argument(
        "--token-body",
        choices=sorted(TOKEN_BODIES),
        default="both",
        help="which bodies POST /oauth/token takes (Nomos' guides: form; its document: "
        "json); the other is refused with 415",
    )
    parser.add_argument("--no-seed", action="store_true", help="start with no data")
    parser.add_argument(
        "--seed-subscriptions",
        type=int,
        default=0,
        metavar="N",
        help="also hold N numbered customers with one subscription each "
        "(cus_bulk_..., sub_bulk_...; 100000 take a few seconds), for benchmarks",
    )
    parser.add_argument(
        "--state",
        metavar="FILE",
        help="keep the data in FILE: loaded at start when it exists (instead "
        "of seeding), saved after every change",
    )
    parser.add_argument(
        "--forward-to",
        metavar="URL",
        action="append",
        default=[],
        help="deliver the events the sandbox fires (checkout, status changes) "
        "signed to this webhook URL; repeatable",
    )
    parser.add_argument(
        "--retry-base",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="first retry of a failed delivery after this long, doubling "
        f"each time, {RETRIES} retries (Nomos: 1 min ... 32 h)",
    )
    parser.add_argument(
        "--duplicate", action="store_true", help="deliver every forwarded event twice"
    )
    parser.add_argument(
        "--reorder",
        action="store_true",
        help="hold each forwarded event back until the next one has gone",
    )
    parser.add_argument(
        "--return-url",
        metavar="[PLAN=]URL",
        action="append",
        default=[],
        help="where the checkout sends the browser after a sign-up (per plan, "
        "or for all); default: a sandbox confirmation page",
    )
    parser.add_argument(
        "--unreadable-for",
        type=float,
        default=0,
        metavar="SECONDS",
        help="a new subscription answers 404 for its first SECONDS (fault)",
    )
    parser.add_argument(
        "--clock-skew",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="Nomos' clock runs this far ahead of ours (negative: behind): "
        "created_at, updated_at, event timestamps and the Date header",
    )
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=NOMOS_RATE_LIMIT,
        metavar="N",
        help=f"answer 429 above N API requests in any second, as Nomos does above its "
        f"{NOMOS_RATE_LIMIT}/s, with ratelimit-* and retry-after headers on every API "
        "response; 0: off (benchmarks of your own code)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser


def banner(
    sandbox: Sandbox, server: SandboxServer, args: argparse.Namespace, loaded: bool | None
) -> str:
    lines = [
        f"Nomos sandbox listening on {server.url}",
        f"  client_id={args.client_id} client_secret={args.client_secret}",
        f"  webhook signing secret={args.webhook_secret}",
    ]
    if loaded is not None:
        lines.append(f"  state: {args.state} ({'loaded' if loaded else 'new file'})")
    if seed.ALICE in sandbox.customers:
        lines.append(
            f"  seeded customers: {seed.ALICE} (subscription "
            f"{seed.ALICE_SUBSCRIPTION}), {seed.ACME} (company, 2 subscriptions), "
            f"{seed.CAROL} (no subscription)"
        )
    bulk = seeded(sandbox)
    if bulk:
        lines.append(f"  {bulk} numbered customers with one subscription each (cus_bulk_...)")
    lines.append(f"  checkout: {checkout_origin(server.url, DEFAULT_PLAN)}/")
    limit = sandbox.rate_limiter.limit
    lines.append(
        f"  rate limit: {limit} API requests/s, then 429" if limit else "  rate limit: off"
    )
    if sandbox.clock_skew:
        lines.append(f"  Nomos' clock: {sandbox.clock_skew:+g} s from ours")
    if sandbox.forwarder is not None:
        lines.append(f"  forwarding events to {sandbox.forwarder.describe()}")
    else:
        lines.append("  events are not forwarded (--forward-to URL)")
    for plan, url in sorted(sandbox.return_urls.items()):
        lines.append(f"  after checkout ({'every plan' if plan == '*' else plan}): {url}")
    lines.append(CONTROL_API.rstrip())
    lines.append("Ctrl-C to stop.")
    return "\n".join(lines)


def configure(args: argparse.Namespace) -> tuple[Sandbox, bool | None]:
    """A sandbox as the arguments ask; whether its data was loaded from ``--state``."""
    sandbox = Sandbox(
        args.client_id,
        args.client_secret,
        args.token_ttl,
        not args.no_seed,
        scope=args.scope,
        webhook_secret=args.webhook_secret,
        clock_skew=args.clock_skew,
        token_body=args.token_body,
        rate_limit=args.rate_limit,
    )
    loaded = sandbox.use_state_file(args.state) if args.state else None
    seed_subscriptions(sandbox, args.seed_subscriptions)
    for value in args.return_url:
        plan, url = _return_url(value)
        sandbox.return_urls[plan] = url
    if args.forward_to:
        sandbox.forwarder = Forwarder(
            sandbox,
            args.forward_to,
            args.webhook_secret,
            retry_base=args.retry_base,
            duplicate=args.duplicate,
            reorder=args.reorder,
        )
    sandbox.unreadable_for = max(0.0, args.unreadable_for)
    return sandbox, loaded


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        sandbox, loaded = configure(args)
    except ValueError as exc:
        parser.error(str(exc))
    server = SandboxServer(sandbox, args.host, args.port, verbose=args.verbose).start()
    print(banner(sandbox, server, args, loaded), flush=True)
    # Ctrl-C, and SIGTERM from a process manager, stop the server cleanly. SIGINT is set
    # explicitly: a shell that starts us in the background hands it to us ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("\nstopping", flush=True)
    finally:
        server.stop()
        if sandbox.forwarder is not None:
            sandbox.forwarder.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
