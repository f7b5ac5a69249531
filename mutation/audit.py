"""The audit's 13 deliberate bugs, each applied to a scratch copy and run against the tests.

Dedupe is tried on both recording paths, so the table has 14 rows. Then issue 21's guards
(``GUARDS``): each check removed where it stands, one path at a time (active user, admin
permissions, CSRF per endpoint and content type, the webhook signature, allowed hosts, per-API
keys, a late worker's writes, bounded loops, stored values).

``python mutation/audit.py [--full] [NAME...]`` copies the work tree (without .venv/.git) to a
temporary folder, applies one mutation at a time, runs pytest there on SQLite and prints whether
the suite caught it. By default each mutation runs only the test files that cover its module (a
subset of ``make test``: caught there means caught by ``make test``); ``--full`` runs the whole
suite for each. Exit status 1 if any mutation survives.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


SIG = ("tests/webhooks/test_signatures.py", "tests/webhooks/test_webhooks.py")
PROC = ("tests/webhooks/test_processing.py", "tests/webhooks/test_webhooks.py")
TOK = ("tests/client/test_tokens.py", "tests/client/test_tokens_branches.py",
       "tests/client/test_client.py")
CLIENT = ("tests/client/test_client.py", "tests/portal/test_views_portal.py",
          "tests/leads/test_leads.py")

MUTATIONS = [
    Mutation("compare_digest -> ==", "nomos_billing/signatures.py",
             "hmac.compare_digest(expected, candidate)", "expected == candidate", SIG),
    Mutation("claim: check, then update", "nomos_billing/lifecycle.py",
             "        won = self.filter(claimable, pk=event.pk).update(\n",
             "        if not self.filter(claimable, pk=event.pk).exists():\n"
             "            return False\n"
             "        won = self.filter(pk=event.pk).update(\n", PROC),
    Mutation("tokens: no re-check under the lock", "nomos_billing/tokens.py",
             "                    if token is not None and token.remaining() > self.margin:\n"
             "                        return token\n", "", TOK),
    Mutation("tokens: waiter with a valid token fetches", "nomos_billing/tokens.py",
             "            if current is not None and current.remaining() > 1:\n"
             "                return current\n",
             "            if current is not None and current.remaining() > 1:\n"
             "                return self._fetch_and_store()\n", TOK),
    Mutation("tolerance one-sided (future accepted)", "nomos_billing/signatures.py",
             "abs(current - parsed.timestamp) > tolerance",
             "current - parsed.timestamp > tolerance", SIG),
    Mutation("secret rotation: first secret only", "nomos_billing/signatures.py",
             "enumerate(secrets)", "enumerate(secrets[:1])", SIG),
    Mutation("claim freshness: any claim taken over", "nomos_billing/lifecycle.py",
             "claimed_at__lt=(now or timezone.now()) - claim_timeout()",
             "claimed_at__lt=(now or timezone.now())", PROC),
    # The webhook path records with one INSERT ... ON CONFLICT: the same bug there is a
    # conflict that overwrites the stored envelope (what update_or_create would do).
    Mutation("dedupe via update_or_create", "nomos_billing/deliveries.py",
             'f"DO UPDATE SET {count} = {table}.{count} + 1 "',
             'f"DO UPDATE SET {count} = {table}.{count} + 1, "\n'
             '        f"{quote(\'payload\')} = excluded.{quote(\'payload\')}, "\n'
             '        f"{quote(\'secret_index\')} = excluded.{quote(\'secret_index\')} "',
             PROC),
    Mutation("dedupe via update_or_create (record_event)", "nomos_billing/deliveries.py",
             "    event, created = WebhookEvent.objects.get_or_create(\n        event_id=event_id,",
             "    event, created = WebhookEvent.objects.update_or_create(\n"
             "        event_id=event_id,", PROC),
    Mutation("deep links: '..' allowed", "nomos_billing/deeplinks.py",
             "    return not any(_DOTS_ONLY.fullmatch(segment)",
             "    return True or not any(_DOTS_ONLY.fullmatch(segment)",
             ("tests/portal/test_deeplinks.py", "tests/portal/test_views_portal.py",
              "tests/portal/test_portal.py")),
    Mutation("portal host: suffix instead of same-domain", "nomos_billing/portal.py",
             "is_same_domain(host, pattern)", "host.endswith(pattern.lstrip('.'))",
             ("tests/portal/test_portal.py", "tests/portal/test_views_portal.py")),
    Mutation("token lock: cache.set instead of cache.add", "nomos_billing/tokens.py",
             "            if self.cache.add(lock_key, owner, LOCK_TIMEOUT):\n",
             "            self.cache.set(lock_key, owner, LOCK_TIMEOUT)\n            if True:\n",
             TOK),
    Mutation("retry statuses: 503 dropped", "nomos_billing/retry.py",
             "RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})",
             "RETRY_STATUSES = frozenset({429, 500, 502, 504})", CLIENT),
    Mutation("read timeouts retried", "nomos_billing/retry.py",
             "        read=0,\n", "        read=max_retries,\n", CLIENT),
]

# Issue 21: each guard removed where it stands, on each path, one at a time; each must fail a
# test of the guard tables (tests/guards/test_guard_*.py, test_admin_permissions.py, ...).
ACTIVE = ("tests/guards/test_guard_active_user.py",)
ADMIN = ("tests/admin/test_admin_permissions.py", "tests/admin/test_admin_linking.py")
CSRF = ("tests/guards/test_guard_csrf.py",)
HOSTS = ("tests/guards/test_guard_allowed_host.py",)
APIS = ("tests/client/test_client_two_apis.py",)
LOOPS = ("tests/guards/test_guard_bounded_loops.py", "tests/tasks/test_tasks.py")
RACES = ("tests/webhooks/test_takeover_claim_races.py",)
STORE = ("tests/webhooks/test_webhooks_storage_values.py",)
BUDGET = ("tests/guards/test_guard_budget.py",)
_LINK_CSRF = "    refused = _csrf_refusal(request)\n    if refused is not None:"


def _csrf_exempt_for(content_type: str) -> str:
    return (f'    refused = None if request.content_type == "{content_type}" '
            "else _csrf_refusal(request)\n    if refused is not None:")


def _csrf_dropped_for(name: str, view: str) -> Mutation:
    # Every signed-in page takes CSRF from one decorator (pages.signed_in_page): the bug is
    # that decorator leaving one view out.
    return Mutation(name, "nomos_billing/pages.py", "        guarded = csrf_protect(guarded)\n",
                    f'        guarded = guarded if view.__name__ == "{view}" '
                    "else csrf_protect(guarded)\n", CSRF)


GUARDS = [
    Mutation("active user: by_metadata", "nomos_billing/linking.py",
             '    if not getattr(user, "is_active", True):\n        return None, "names an',
             '    if False:\n        return None, "names an', ACTIVE),
    Mutation("active user: by_lead", "nomos_billing/linking.py",
             'if lead is None or not getattr(lead.user, "is_active", True):',
             "if lead is None:", ACTIVE),
    Mutation("active user: by_email", "nomos_billing/linking.py",
             "_nomos_address=address, is_active=True", "_nomos_address=address", ACTIVE),
    Mutation("active user: mailbox confirmation", "nomos_billing/confirmation.py",
             ' or not getattr(user, "is_active", False):', ":", ACTIVE),
    Mutation("active user: operator confirmation", "nomos_billing/confirmation.py",
             '    if not getattr(claim.user, "is_active", False):\n        return "wrong_user"\n',
             "", ACTIVE),
    Mutation("active user: admin link form", "nomos_billing/admin/forms.py",
             'if not getattr(user, "is_active", True):', "if False:", ACTIVE),
    Mutation("active user: link permission", "nomos_billing/admin/base.py",
             "request.user.is_active and request.user.has_perm", "request.user.has_perm", ACTIVE),
    Mutation("admin: Refresh from Nomos without change", "nomos_billing/admin/customers.py",
             '_("Refresh from Nomos"), permissions=["change"]', '_("Refresh from Nomos")', ADMIN),
    Mutation("admin: Process again without change", "nomos_billing/admin/events.py",
             '_("Process again"), permissions=["change"]', '_("Process again")', ADMIN),
    Mutation("admin: Reject without link", "nomos_billing/admin/customers.py",
             '_("Reject: link nobody"), permissions=["link"]', '_("Reject: link nobody")', ADMIN),
    Mutation("admin: link actions' 403", "nomos_billing/admin/base.py",
             "if named & self._link_actions() and not self.has_link_permission(request):",
             "if False:", ADMIN),
    Mutation("admin: health page without view", "nomos_billing/admin/events.py",
             "        if not self.has_view_permission(request):\n", "        if False:\n", ADMIN),
    Mutation("admin: health page outside admin_view", "nomos_billing/admin/events.py",
             "self.admin_site.admin_view(self.health_view)", "self.health_view", ADMIN),
    Mutation("admin: events deletable by all staff", "nomos_billing/admin/events.py",
             "        return admin.ModelAdmin.has_delete_permission(self, request, obj)",
             "        return True", ADMIN),
    Mutation("admin: mirror fields editable", "nomos_billing/admin/base.py",
             "return [f.name for f in self.model._meta.fields] + list(self.readonly_fields)",
             "return list(self.readonly_fields)", ADMIN),
    _csrf_dropped_for("csrf: portal", "portal"),
    _csrf_dropped_for("csrf: portal/start", "start"),
    _csrf_dropped_for("csrf: link/confirm", "link_confirm"),
    _csrf_dropped_for("csrf: link/resend", "link_resend"),
    *(Mutation(f"csrf: portal/link exempts {kind}", "nomos_billing/views.py", _LINK_CSRF,
               _csrf_exempt_for(kind), CSRF)
      for kind in ("application/x-www-form-urlencoded", "multipart/form-data",
                   "application/json", "text/plain")),
    Mutation("signature: text/plain unsigned", "nomos_billing/webhooks.py",
             "    secret_index = verify_signature(\n",
             '    secret_index = 0 if request.content_type == "text/plain" else '
             "verify_signature(\n", CSRF),
    Mutation("allowed host: portal links", "nomos_billing/portal.py",
             "    kind = link_kind(link)\n", '    kind = link_kind(link) or "portal"\n', HOSTS),
    Mutation("allowed host: lead checkout link", "nomos_billing/views.py",
             "        or not is_allowed_link(link)\n", "", HOSTS),
    Mutation("budget: clicks", "nomos_billing/pages.py",
             "    with budget.limit(nomos_settings.CLICK_BUDGET), api_rate",
             "    with budget.limit(1000), api_rate", BUDGET),
    Mutation("budget: the lead form", "nomos_billing/views.py",
             '        ratelimit.hit(request.user, "signup")\n        with click_budget():',
             '        ratelimit.hit(request.user, "signup")\n        if True:', BUDGET),
    Mutation("budget: webhook processing", "nomos_billing/processing.py",
             'with budget.limit(nomos_settings.WEBHOOK_BUDGET), api_rate',
             "with budget.limit(1000), api_rate", BUDGET),
    Mutation("per API: token cache key", "nomos_billing/conf.py",
             'ident = f"{client_id}|{base_url}".encode()', 'ident = f"{client_id}".encode()',
             APIS),
    Mutation("per API: breaker key", "nomos_billing/breaker.py",
             "    return _key_for(nomos_settings.API_BASE_URL)", '    return _key_for("")', APIS),
    Mutation("per API: misconfiguration report", "nomos_billing/misconfiguration.py",
             "|{nomos_settings.token_cache_key}\"", '"', APIS),
    Mutation("late worker: outcome without the claim token", "nomos_billing/lifecycle.py",
             "pk=event.pk, status=Status.PROCESSING, claimed_at=event.claimed_at",
             "pk=event.pk, status=Status.PROCESSING", RACES),
    Mutation("late worker: announces anyway", "nomos_billing/processing.py",
             "            if announce and finished:", "            if announce:", RACES),
    Mutation("loop: re-enqueue counter does not count", "nomos_billing/tasks.py",
             "enqueue(event_id, retry=retry + 1, delay=delay)",
             "enqueue(event_id, retry=retry, delay=delay)", LOOPS),
    Mutation("loop: a repeated cursor followed", "nomos_billing/lists.py",
             "            if str(cursor) in seen:", "            if False:", LOOPS),
    Mutation("loop: unbounded stuck sweep", "nomos_billing/takeover.py",
             '"claimed_at")[:QUEUED_BATCH]', '"claimed_at")', LOOPS),
    Mutation("storage: NaN from Nomos kept", "nomos_billing/jsonsafe.py",
             "        return data if math.isfinite(data) else None", "        return data", STORE),
    Mutation("storage: NaN literal parsed", "nomos_billing/deliveries.py",
             "json.loads(body, parse_constant=_reject_constant)", "json.loads(body)", STORE),
]
MUTATIONS += GUARDS


def run(mutation: Mutation, scratch: Path, full: bool) -> tuple[bool, float, str]:
    target = scratch / mutation.path
    original = target.read_text()
    if original.count(mutation.old) != 1:
        return False, 0.0, f"cannot apply: {mutation.old!r} occurs {original.count(mutation.old)}x"
    target.write_text(original.replace(mutation.old, mutation.new))
    try:
        args = [] if full else list(mutation.tests)
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CACHE_URL")}
        started = time.monotonic()
        result = subprocess.run(  # noqa: S603 - our own interpreter and test paths
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly",
             "-p", "no:cacheprovider", "-m", "not slow and not browser", *args],
            cwd=scratch, env=env, capture_output=True, text=True, check=False,
        )
        elapsed = time.monotonic() - started
        failed = [ln for ln in result.stdout.splitlines() if ln.startswith("FAILED")]
        return result.returncode == 1, elapsed, failed[0] if failed else result.stdout[-200:]
    finally:
        target.write_text(original)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the whole suite per mutation")
    parser.add_argument("names", nargs="*", help="substrings of mutation names to run")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.names or any(n in m.name for n in args.names)]
    survivors = 0
    with tempfile.TemporaryDirectory(prefix="nomos-audit-") as tmp:
        scratch = Path(tmp) / "src"
        shutil.copytree(ROOT, scratch, ignore=shutil.ignore_patterns(
            ".venv", ".git", ".nox", "mutants", "__pycache__", "*.egg-info", "artifacts"))
        print(f"{'mutation':45} {'result':8} {'secs':>5}  first failing test")
        for mutation in chosen:
            caught, secs, detail = run(mutation, scratch, args.full)
            survivors += not caught
            print(f"{mutation.name:45} {'caught' if caught else 'SURVIVED':8} {secs:5.0f}  "
                  f"{detail}", flush=True)
    print(f"{len(chosen) - survivors} of {len(chosen)} caught")
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
