"""``make demo``: the example site and the Nomos sandbox on loopback, with demo users.

1. migrates the example site's database (SQLite unless DATABASE_URL says otherwise);
2. creates the demo users (their passwords are reset on every run, so a second run works);
3. starts the sandbox in this process and ``manage.py runserver`` as a child process;
4. puts a signed user reference for alice (``linking.user_reference``) into her sandbox
   subscription's metadata, as a hosted checkout opened from ``checkout_url(alice)`` would, and
   delivers a signed ``subscription.created`` to the site's webhook URL, so alice is linked the
   way production links customers (webhook -> fetch subscription -> metadata resolver, which
   accepts only a value this site signed);
5. forwards every event the sandbox fires (its hosted checkout's ``subscription.created``,
   status changes through its control API) to the site's webhook URL, the way Nomos delivers
   them, so bob's sign-up (form -> lead -> sandbox checkout -> back to the site) links him with
   no command typed;
6. keeps the sandbox's data in a state file beside the SQLite database (``<db>.sandbox.json``),
   so a rerun on the same database finds the same customers (a new database starts both fresh);
7. prints the URLs, the logins with each user's state as the database has it (a rerun shows
   what the last run left), and ``manage.py`` commands aimed at this run's sandbox and
   database; then waits; Ctrl-C stops both servers.

The demo always uses the sandbox and its published fake credentials, whatever ``.env`` says:
run ``manage.py runserver`` yourself to use the settings in ``.env``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nomos_billing.sandbox.hosts import CHECKOUT_HOSTS, PORTAL_HOSTS, checkout_origin

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CLIENT_ID = "sandbox-client"
CLIENT_SECRET = "sandbox-secret"
WEBHOOK_SECRET = "whsec_sandbox"
PLAN_ID = "pln_sandbox_home"  # the sandbox's default plan

#: (username, password, email, superuser)
USERS = [
    ("alice", "alice-demo", "alice@example.com", False),
    ("bob", "bob-demo", "bob@example.com", False),
    ("admin", "admin-demo", "admin@example.com", True),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the example site against the sandbox.")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address for both servers")
    parser.add_argument("--port", type=int, default=8000, help="the site's port")
    parser.add_argument("--sandbox-port", type=int, default=8765, help="the sandbox's port")
    parser.add_argument("--startup-timeout", type=float, default=30.0,
                        help="seconds to wait for the site to answer")
    parser.add_argument("--sandbox-state", type=Path, default=None, metavar="FILE",
                        help="the sandbox's state file (default: beside the SQLite database, "
                             "or example_project/sandbox-state.json for another database)")
    parser.add_argument("--tasks", choices=["", "db"], default="",
                        help="db: process webhooks on the database task backend, with a "
                             "db_worker child process (make demo TASKS=db)")
    return parser.parse_args(argv)


def fail(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def ensure_free(host: str, port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            fail(f"{host}:{port} is in use; stop what runs there or pass another port "
                 f"(make demo {what}=...).")


def configure_environment(args: argparse.Namespace) -> dict[str, str]:
    """The variables both this process and the runserver child use."""
    forced = {
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "NOMOS_API_BASE_URL": f"http://{args.host}:{args.sandbox_port}",
        "NOMOS_CLIENT_ID": CLIENT_ID,
        "NOMOS_CLIENT_SECRET": CLIENT_SECRET,
        "NOMOS_WEBHOOK_SECRETS": WEBHOOK_SECRET,
        # Users without a customer get the sign-up form, which creates a lead in the sandbox.
        "NOMOS_PLAN_ID": PLAN_ID,
        "NOMOS_TASKS": args.tasks,
        # The sandbox's hosted checkout for the plan ({% nomos_checkout_url %}), on the plan's
        # own host as Nomos serves it; the sandbox's portal and checkout hosts are accepted.
        "NOMOS_CHECKOUT_URL": checkout_origin(f"http://{args.host}:{args.sandbox_port}", PLAN_ID)
        + "/",
        "NOMOS_PORTAL_HOSTS": ",".join(PORTAL_HOSTS),
        "NOMOS_CHECKOUT_HOSTS": ",".join(CHECKOUT_HOSTS),
        # Where a held link's confirmation mail (printed to the console) points.
        "NOMOS_SITE_URL": f"http://{args.host}:{args.port}",
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update(forced)
    return dict(os.environ)


def create_users() -> dict[str, Any]:
    from django.contrib.auth import get_user_model

    User = get_user_model()  # noqa: N806
    users = {}
    for username, password, email, superuser in USERS:
        user, _ = User.objects.get_or_create(username=username, defaults={"email": email})
        user.email = email
        user.is_active = True
        user.is_staff = user.is_superuser = superuser
        user.set_password(password)
        user.save()
        users[username] = user
    return users


def sandbox_state_file(args: argparse.Namespace) -> tuple[Path, bool]:
    """Where the sandbox keeps its data, and whether the site's database is new (then the
    sandbox starts from its seed too, so the two never disagree)."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    sqlite = database["ENGINE"].endswith("sqlite3")
    db_path = Path(str(database["NAME"])) if sqlite else None
    state = args.sandbox_state or (
        db_path.with_name(db_path.name + ".sandbox.json") if db_path is not None
        else HERE / "sandbox-state.json"
    )
    fresh_database = db_path is not None and not db_path.exists()
    return state, fresh_database


def point_sandbox_at_users(sandbox: Any, users: dict[str, Any]) -> None:
    """Seed metadata names nobody; give alice's subscription her signed reference (what a
    checkout from ``checkout_url(alice)`` leaves there). Acme's stays unnamed, so bob stays
    without a customer even after ``manage.py nomos_sync``."""
    from nomos_billing.conf import nomos_settings
    from nomos_billing.linking import user_reference
    from nomos_billing.sandbox import seed

    key = nomos_settings.METADATA_USER_KEY
    with sandbox.lock:
        sandbox.subscriptions[seed.ALICE_SUBSCRIPTION]["metadata"] = {
            key: user_reference(users["alice"])
        }


def wait_for_site(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            fail(f"manage.py runserver exited with code {process.returncode}; see its output "
                 "above.")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.2)
    fail(f"the site did not answer at {url} within {timeout:.0f} s.")


def link_alice(sandbox: Any, webhook_url: str, alice: Any) -> str:
    from nomos_billing.models import NomosCustomer
    from nomos_billing.sandbox import seed

    deliveries_before = len(sandbox.webhook_deliveries)
    event = sandbox.send_webhook(webhook_url, "subscription.created", secret=WEBHOOK_SECRET,
                                 context={"subscription": seed.ALICE_SUBSCRIPTION}, timeout=30)
    delivery = sandbox.webhook_deliveries[deliveries_before]
    result = f"{event['id']} -> HTTP {delivery['status'] or delivery['error']}"
    deadline = time.monotonic() + 15  # with a task worker (202), the link lands a moment later
    while True:
        linked = NomosCustomer.objects.filter(user=alice, customer_id=seed.ALICE).exists()
        if linked or delivery["status"] != 202 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not linked:
        print(f"demo: warning: alice is not linked after the webhook ({result}); see the site's "
              "log above.", file=sys.stderr, flush=True)
    return result


#: What the banner says for each way a user can have been linked (``NomosCustomer.linked_by``).
HOW_LINKED = {
    "by_metadata": "through the signed user reference in its metadata (by_metadata)",
    "by_lead": "through the lead the site created for this user (by_lead)",
    "confirmed": "confirmed from the contract's own mailbox (confirmed)",
    "by_email": "by the same e-mail address (by_email)",
    "admin": "by hand in the admin",
}

#: What an unlinked demo user can do next, by name.
NEXT_STEP = {
    "alice": ["NOT linked (see the warning above)"],
    "bob": [
        "no Nomos customer yet; the button leads to the sign-up form,",
        "which creates a lead and opens the sandbox checkout; signing up",
        "there brings him back here, linked by the forwarded",
        "subscription.created (context.lead)",
    ],
}


def user_state(user: Any) -> list[str]:
    """The banner's lines for one demo user, read from the database when the banner is
    printed (a rerun shows what the first run left, never what a first run would say)."""
    from nomos_billing.confirmation import pending_claim
    from nomos_billing.leads import has_recent_checkout
    from nomos_billing.models import NomosCustomer

    customer = NomosCustomer.objects.filter(user=user).first()
    if customer is not None:
        subscriptions = list(
            customer.subscriptions.order_by("-nomos_created_at", "pk")
            .values_list("subscription_id", flat=True)
        )
        what = f"subscription {', '.join(subscriptions)}" if subscriptions else "no subscription"
        how = HOW_LINKED.get(customer.linked_by, f"by {customer.linked_by or 'an unknown way'}")
        return [f"linked to {customer.customer_id} ({what})", f"{how};",
                "the portal button opens the sandbox portal signed in as this customer"]
    claim = pending_claim(user)
    if claim is not None:
        return [f"not linked: customer {claim.customer.customer_id} waits for confirmation",
                "from its mailbox (the mail is printed in the site's log above);",
                "the page says so and offers to send it again"]
    if has_recent_checkout(user):
        return ["not linked yet: a sign-up (lead) of the last day that Nomos has not",
                "reported; the portal button asks the sandbox for it"]
    return NEXT_STEP.get(user.get_username(), ["no Nomos customer yet"])


def login_lines(users: dict[str, Any]) -> str:
    lines = []
    for username, password, _email, superuser in USERS:
        if superuser:
            continue
        state = user_state(users[username])
        login = f"{username:<5} / {password}"
        lines.append(f"    {login:<20} {state[0]}")
        lines.extend(f"    {'':<20} {line}" for line in state[1:])
    return "\n".join(lines)


#: What ``example_project/settings.py`` reads when a variable is not set; a pasted command
#: needs a variable only where the demo's differs (or when a .env would be read instead).
SETTINGS_DEFAULTS = {
    "NOMOS_API_BASE_URL": "http://127.0.0.1:8765",
    "NOMOS_CLIENT_ID": CLIENT_ID,
    "NOMOS_CLIENT_SECRET": CLIENT_SECRET,
    "NOMOS_WEBHOOK_SECRETS": WEBHOOK_SECRET,
}


def manage_command(env: dict[str, str], *words: str) -> str:
    """A ``manage.py`` command line to paste into a shell in the directory the demo was started
    from, aimed at this demo's sandbox and database: the demo's own variables are not in the
    reader's shell, so those that differ from the settings' defaults go in front."""
    dotenv = (HERE / ".env").is_file()  # manage.py would read it; the demo ignored it
    assignments = [
        f"{name}={shlex.quote(env[name])}"
        for name, default in SETTINGS_DEFAULTS.items()
        if env.get(name) != default or dotenv
    ]
    if env.get("DATABASE_URL"):
        assignments.append(f"DATABASE_URL={shlex.quote(env['DATABASE_URL'])}")
    python = _relative(Path(sys.executable))
    manage = _relative(HERE / "manage.py")
    return " ".join([*assignments, python, manage, *(shlex.quote(w) for w in words)])


def _relative(path: Path) -> str:
    """``path`` as typed from the current directory: relative below it, else absolute."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path.absolute())


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_free(args.host, args.port, "PORT")
    ensure_free(args.host, args.sandbox_port, "SANDBOX_PORT")
    env = configure_environment(args)

    import django

    django.setup()
    from django.core.management import call_command
    from django.urls import reverse

    from nomos_billing.sandbox import Sandbox, SandboxServer
    from nomos_billing.sandbox.forwarding import Forwarder
    from nomos_billing.sandbox.ratelimit import NOMOS_RATE_LIMIT

    state_file, fresh_database = sandbox_state_file(args)
    if fresh_database:
        state_file.unlink(missing_ok=True)
    print("== migrating the example site's database", flush=True)
    call_command("migrate", interactive=False, verbosity=0)
    users = create_users()

    site_url = f"http://{args.host}:{args.port}"
    # Nomos' documented limit, so the demo shows the site living within it (its own limiter,
    # NOMOS_API_RATE_LIMIT, paces it; the sandbox answers 429 above it as Nomos would).
    sandbox = Sandbox(CLIENT_ID, CLIENT_SECRET, webhook_secret=WEBHOOK_SECRET,
                      rate_limit=NOMOS_RATE_LIMIT)
    try:
        state_loaded = sandbox.use_state_file(str(state_file))
    except ValueError as exc:
        fail(f"{exc}; delete it (or pass --sandbox-state) to start the sandbox afresh.")
    point_sandbox_at_users(sandbox, users)
    sandbox.save_state()
    # Like Nomos: after the hosted checkout the browser comes back to the site, and the
    # checkout's events reach the site's webhook by themselves.
    sandbox.return_urls["*"] = site_url + "/"
    sandbox.forwarder = Forwarder(sandbox, [site_url + reverse("nomos_billing:webhook")],
                                  WEBHOOK_SECRET, retry_base=1.0)
    server = SandboxServer(sandbox, args.host, args.sandbox_port).start()
    site = subprocess.Popen(  # noqa: S603 - our own interpreter and manage.py
        [sys.executable, str(HERE / "manage.py"), "runserver", f"{args.host}:{args.port}",
         "--noreload"],
        cwd=HERE, env=env,
    )

    children = [site]
    if args.tasks == "db":
        children.append(subprocess.Popen(  # noqa: S603 - our own interpreter and manage.py
            [sys.executable, str(HERE / "manage.py"), "db_worker", "--interval", "0.5"],
            cwd=HERE, env=env,
        ))
    # SIGTERM (CI, process managers) stops the demo the way Ctrl-C does. SIGINT is set too: a
    # shell that starts us in the background hands us SIGINT ignored, and Ctrl-C must still work.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        wait_for_site(site_url + "/", site, args.startup_timeout)
        webhook_url = site_url + reverse("nomos_billing:webhook")
        webhook = link_alice(sandbox, webhook_url, users["alice"])
        print(f"""
== Nomos billing demo is running
  site:     {site_url}/
  admin:    {site_url}/admin/          login admin / admin-demo
  sandbox:  {server.url}   client {CLIENT_ID} / {CLIENT_SECRET}, webhook secret {WEBHOOK_SECRET}
            Nomos' rate limit: {sandbox.rate_limiter.limit} requests/s, then 429
            ({server.url}/_sandbox/rate-limit counts what it refused)

  log in as
{login_lines(users)}

  sandbox checkout:  {checkout_origin(server.url, PLAN_ID)}/  (returns to {site_url}/)
  events forwarded:  {sandbox.forwarder.describe()}
  sandbox state:     {state_file} ({"loaded" if state_loaded else "new"}; delete it together
                     with the database to start over)
  control API:       {server.url}/_sandbox/...  (python -m nomos_billing.sandbox --help)

  subscription.created for alice delivered: {webhook}{worker_note(args)}
  try: {manage_command(env, "nomos_trigger", "test.event", "--url", webhook_url)}
       {manage_command(env, "nomos_sync", "--dry-run")}

Ctrl-C stops both servers.""", flush=True)
        while site.poll() is None:
            time.sleep(0.5)
        print(f"demo: the site exited with code {site.returncode}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n== stopping", flush=True)
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
        server.stop()
        sandbox.forwarder.stop()
        sandbox.save_state()


def worker_note(args: argparse.Namespace) -> str:
    if args.tasks != "db":
        return ""
    return ("\n  webhooks:  answered 202 and processed by the database task worker "
            "(manage.py db_worker)")


if __name__ == "__main__":
    raise SystemExit(main())
