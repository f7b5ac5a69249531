"""``python -m nomos_billing.sandbox``: a seeded fake Nomos in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import threading

from . import seed
from .server import SandboxServer
from .state import Sandbox


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nomos_billing.sandbox",
                                     description="Run a local fake of the Nomos API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--client-id", default="sandbox-client")
    parser.add_argument("--client-secret", default="sandbox-secret")
    parser.add_argument("--webhook-secret", default="sandbox-webhook-secret",
                        help="default secret for POST /_sandbox/webhooks")
    parser.add_argument("--scope", default="read:* write:*")
    parser.add_argument("--token-ttl", type=float, default=3600)
    parser.add_argument("--no-seed", action="store_true", help="start with no data")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)

    sandbox = Sandbox(args.client_id, args.client_secret, args.token_ttl, not args.no_seed,
                      scope=args.scope, webhook_secret=args.webhook_secret)
    server = SandboxServer(sandbox, args.host, args.port, verbose=args.verbose).start()
    print(f"Nomos sandbox listening on {server.url}")
    print(f"  client_id={args.client_id} client_secret={args.client_secret}")
    print(f"  webhook secret (for /_sandbox/webhooks)={args.webhook_secret}")
    if not args.no_seed:
        print(f"  seeded customers: {seed.ALICE} (subscription {seed.ALICE_SUBSCRIPTION}), "
              f"{seed.ACME} (company, 2 subscriptions), {seed.CAROL} (no subscription)")
    print("  control: GET /_sandbox/calls, GET /_sandbox/state, POST /_sandbox/faults, "
          "POST /_sandbox/reset, POST /_sandbox/webhooks")
    print("Ctrl-C to stop.", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("\nstopping", flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
