"""The operator commands: nomos_trigger, nomos_sync, nomos_check_credentials.

Each command is driven through ``call_command`` against a live sandbox (or a small receiver
that records what ``nomos_trigger`` posts) and judged by its output, the rows it leaves and the
requests the sandbox counted. Failures must be one-line ``CommandError``s (exit code 1).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import responses
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from nomos_billing.linking import user_reference
from nomos_billing.models import NomosCustomer, NomosSubscription, WebhookEvent
from nomos_billing.sandbox import Fault, seed
from nomos_billing.signatures import HEADER, parse_header, verify_signature

ROOT = Path(__file__).resolve().parents[2]
SECRETS = ["whsec_test_new", "whsec_test_old"]


def run(name: str, *args: str) -> str:
    out = StringIO()
    call_command(name, *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def command_error(name: str, *args: str) -> str:
    with pytest.raises(CommandError) as info:
        run(name, *args)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# -- a receiver that records what nomos_trigger posts -----------------------------------------


class Receiver:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.url = ""
        self.body = b"ok"
        self.content_type = "text/plain"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            rec.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            self.send_response(rec.status)
            self.send_header("Content-Type", rec.content_type)
            self.send_header("Content-Length", str(len(rec.body)))
            self.end_headers()
            self.wfile.write(rec.body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/nomos/webhook/"
    yield rec
    server.shutdown()
    server.server_close()


# -- nomos_trigger ----------------------------------------------------------------------------


def test_trigger_posts_an_event_signed_with_the_newest_secret(receiver: Receiver) -> None:
    out = run("nomos_trigger", "subscription.created", "--subscription", "sub_123",
              "--lead", "lead_9", "--url", receiver.url)

    [request] = receiver.requests
    body = request["body"]
    assert verify_signature(body, request["headers"][HEADER], SECRETS) == 0
    event = json.loads(body)
    assert event["topic"] == "subscription.created"
    assert event["context"] == {"subscription": "sub_123", "lead": "lead_9"}
    assert event["id"].startswith("evt_")
    assert "HTTP 200" in out and "Accepted (1 of 1)" in out
    assert "whsec_test_new" not in out


def test_trigger_duplicate_sends_the_same_event_id_n_times(receiver: Receiver) -> None:
    out = run("nomos_trigger", "test.event", "--duplicate", "3", "--url", receiver.url)

    ids = {json.loads(r["body"])["id"] for r in receiver.requests}
    assert len(receiver.requests) == 3 and len(ids) == 1
    assert out.count("HTTP 200") == 3


def test_trigger_stale_signs_outside_the_tolerance(receiver: Receiver) -> None:
    receiver.status = 400
    out = run("nomos_trigger", "test.event", "--stale", "--url", receiver.url)

    [request] = receiver.requests
    timestamp = parse_header(request["headers"][HEADER]).timestamp
    assert timestamp < __import__("time").time() - 300
    assert "Rejected as expected" in out


def test_trigger_bad_signature_matches_no_configured_secret(receiver: Receiver) -> None:
    from nomos_billing.exceptions import WebhookSignatureMismatch

    receiver.status = 400
    run("nomos_trigger", "test.event", "--bad-signature", "--url", receiver.url)

    [request] = receiver.requests
    with pytest.raises(WebhookSignatureMismatch):
        verify_signature(request["body"], request["headers"][HEADER], SECRETS)


@pytest.mark.parametrize(("args", "status", "message"), [
    ((), 500, "answered HTTP 500"),
    (("--stale",), 200, "accepted a delivery it should have rejected"),
    (("--bad-signature",), 204, "accepted a delivery it should have rejected"),
    (("--bad-signature",), 500, "HTTP 500 instead of 400"),
])
def test_trigger_fails_when_the_site_answers_wrongly(receiver: Receiver, args: tuple[str, ...],
                                                     status: int, message: str) -> None:
    receiver.status = status
    assert message in command_error("nomos_trigger", "test.event", "--url", receiver.url, *args)


@pytest.mark.parametrize(("args", "message"), [
    (("subscription.created",), "pass --subscription sub_..."),
    (("invoice.paid",), "pass --context invoice=..."),
    (("test.event", "--context", "novalue"), "write KEY=VALUE"),
    (("test.event", "--duplicate", "0"), "--duplicate must be 1 or more"),
])
def test_trigger_rejects_incomplete_arguments_before_posting(
    receiver: Receiver, args: tuple[str, ...], message: str
) -> None:
    assert message in command_error("nomos_trigger", *args, "--url", receiver.url)
    assert receiver.requests == []


def test_trigger_without_secrets_says_which_setting(receiver: Receiver, settings) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "WEBHOOK_SECRETS": []}
    assert "WEBHOOK_SECRETS" in command_error("nomos_trigger", "test.event", "--url",
                                              receiver.url)


def test_trigger_to_a_site_that_is_down_is_a_one_line_error() -> None:
    message = command_error("nomos_trigger", "test.event", "--url",
                            "http://127.0.0.1:9/nomos/webhook/")
    assert "could not POST to http://127.0.0.1:9/nomos/webhook/" in message


@pytest.mark.django_db(transaction=True)
def test_trigger_against_the_real_webhook_view_stores_one_event(live_server) -> None:
    url = live_server.url + "/nomos/webhook/"
    out = run("nomos_trigger", "test.event", "--duplicate", "2", "--url", url)
    assert out.count("HTTP 200") == 2
    assert WebhookEvent.objects.count() == 1

    assert "Rejected as expected" in run("nomos_trigger", "test.event", "--bad-signature",
                                         "--url", url)
    assert "Rejected as expected" in run("nomos_trigger", "test.event", "--stale", "--url", url)
    assert WebhookEvent.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_trigger_to_a_wrong_url_of_a_real_site_names_it_in_one_line(live_server) -> None:
    url = live_server.url + "/nomos/webhooks/"  # one letter off
    out = StringIO()
    with pytest.raises(CommandError) as info:
        call_command("nomos_trigger", "test.event", "--url", url, stdout=out, stderr=StringIO())
    message = str(info.value)
    assert "\n" not in message
    assert f"HTTP 404 at {url}: no Nomos webhook view there" in message
    assert "nomos_billing.urls" in message
    printed = out.getvalue()
    assert "delivery 1: HTTP 404 (an HTML page" in printed
    assert "<" not in printed


def test_trigger_to_a_crashing_site_names_the_500_not_its_page(receiver: Receiver) -> None:
    receiver.status = 500
    receiver.content_type = "text/html; charset=utf-8"
    receiver.body = b"<!DOCTYPE html><html><body><h1>Server Error (500)</h1>" + b"x" * 5000
    out = StringIO()
    with pytest.raises(CommandError) as info:
        call_command("nomos_trigger", "test.event", "--url", receiver.url, stdout=out,
                     stderr=StringIO())
    assert "HTTP 500 at" in str(info.value) and "See the site's log" in str(info.value)
    assert "Server Error" not in out.getvalue()
    assert "(an HTML page, 5054 bytes)" in out.getvalue()


def test_trigger_warns_about_a_topic_nomos_does_not_document(receiver: Receiver) -> None:
    err = StringIO()
    call_command("nomos_trigger", "invoice.payed", "--subscription", "sub_1", "--context",
                 "invoice=inv_1", "--url", receiver.url, stdout=StringIO(), stderr=err)
    assert "'invoice.payed' is not a topic Nomos documents (did you mean 'invoice.paid'?)" \
        in err.getvalue()
    # Sent anyway: Nomos may add topics before this list knows them.
    assert json.loads(receiver.requests[0]["body"])["topic"] == "invoice.payed"


def test_trigger_of_a_documented_topic_warns_about_nothing(receiver: Receiver) -> None:
    err = StringIO()
    call_command("nomos_trigger", "test.event", "--url", receiver.url, stdout=StringIO(),
                 stderr=err)
    assert err.getvalue() == ""


# -- nomos_check_credentials ------------------------------------------------------------------


def test_check_credentials_reports_scope_and_minting_without_the_token(nomos) -> None:
    out = run("nomos_check_credentials")

    assert "Scope:      read:* write:*" in out
    assert "can be minted" in out
    assert "sandbox-client" in out
    assert nomos.count("POST /oauth/token") == 1
    for token in nomos.issued_tokens():
        assert token not in out


def test_check_credentials_with_read_only_scope_fails_unless_allowed(nomos) -> None:
    nomos.scope = "read:*"
    assert "lacks write:*" in command_error("nomos_check_credentials")
    out = run("nomos_check_credentials", "--read-only-ok")
    assert "cannot be minted" in out


@pytest.mark.parametrize("answer", [{"access_token": "at_x", "expires_in": 3600},
                                    {"access_token": "at_x", "expires_in": 3600, "scope": ""}])
def test_check_credentials_without_a_scope_in_the_answer_does_not_fail(settings, answer) -> None:
    base = "https://nomos.test"
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "API_BASE_URL": base}
    with responses.RequestsMock() as api:
        # The provider's guides show token answers without "scope".
        api.post(base + "/oauth/token", json=answer)
        out = run("nomos_check_credentials")
    assert "Scope:      (none given)" in out
    assert "Portal links: unknown (Nomos named no scope)" in out
    assert "at_x" not in out


def test_check_credentials_with_a_wrong_secret_names_the_settings(nomos, settings) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "CLIENT_SECRET": "wrong"}
    message = command_error("nomos_check_credentials")
    assert "rejected the credentials" in message and "CLIENT_SECRET" in message


def test_check_credentials_when_nomos_is_down_names_the_url(settings) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "API_BASE_URL": "http://127.0.0.1:9",
                              "MAX_RETRIES": 0}
    message = command_error("nomos_check_credentials")
    assert "http://127.0.0.1:9 is not reachable" in message


def test_check_credentials_without_credentials_names_the_settings(settings) -> None:
    settings.NOMOS_BILLING = {"WEBHOOK_SECRETS": ["x"]}
    assert "CLIENT_ID" in command_error("nomos_check_credentials")


# -- nomos_sync --------------------------------------------------------------------------------


@pytest.fixture
def users(db) -> dict[str, Any]:
    User = get_user_model()  # noqa: N806
    alice = User.objects.create_user("alice", "alice@example.com", "pw")
    other = User.objects.create_user("other", "other@example.com", "pw")
    return {"alice": alice, "other": other}


def _point_alice_at(sandbox: Any, user: Any) -> None:
    with sandbox.lock:
        sandbox.subscriptions[seed.ALICE_SUBSCRIPTION]["metadata"] = {
            "django_user_id": user_reference(user)}
        for sub in (seed.ACME_CONSUMPTION, seed.ACME_FEED_IN):
            sandbox.subscriptions[sub]["metadata"] = {}


@pytest.mark.django_db
def test_sync_creates_every_subscription_and_links_by_metadata(nomos, users) -> None:
    _point_alice_at(nomos, users["alice"])

    out = run("nomos_sync")

    assert set(NomosSubscription.objects.values_list("subscription_id", flat=True)) == {
        seed.ALICE_SUBSCRIPTION, seed.ACME_CONSUMPTION, seed.ACME_FEED_IN}
    alice = NomosCustomer.objects.get(customer_id=seed.ALICE)
    assert alice.user == users["alice"]
    assert alice.email == "alice@example.com"
    assert NomosCustomer.objects.get(customer_id=seed.ACME).user is None
    assert ("Synced 3 subscriptions: 3 created, 0 updated, 1 customer linked; "
            "1 customer in all is not linked to a user.") in out


@pytest.mark.django_db
def test_sync_of_one_subscription_says_it_in_the_singular_and_logs_a_summary(
    nomos, users, caplog
) -> None:
    for n in range(3):
        nomos.add_customer(f"nobody{n}@example.com", id=f"cus_nobody_{n}")
        nomos.add_subscription(f"cus_nobody_{n}")
    caplog.set_level(logging.INFO, logger="nomos_billing")

    out = run("nomos_sync", "--customer", seed.ALICE)
    assert "Synced 1 subscription: 1 created, 0 updated, 0 customers linked; " \
           "1 customer in all is not linked to a user." in out

    caplog.clear()
    out = run("nomos_sync")
    # Five unlinked customers: no "could not be linked" line per subscription, one summary.
    assert "5 customers in all are not linked to a user." in out
    per_item = [r for r in caplog.records if r.name.startswith("nomos_billing")
                and r.levelno <= logging.INFO and "cus_" in r.getMessage()]
    assert per_item == []
    assert "log lines at INFO folded into this summary" in out


@pytest.mark.django_db
def test_sync_twice_updates_and_links_nothing_new(nomos, users) -> None:
    _point_alice_at(nomos, users["alice"])
    run("nomos_sync")
    nomos.set_subscription_status(seed.ACME_FEED_IN, "active")

    out = run("nomos_sync")

    assert "3 subscriptions: 0 created, 3 updated, 0 customers linked" in out
    assert NomosSubscription.objects.get(subscription_id=seed.ACME_FEED_IN).status == "active"


@pytest.mark.django_db
def test_sync_dry_run_prints_the_summary_and_saves_nothing(nomos, users) -> None:
    _point_alice_at(nomos, users["alice"])

    out = run("nomos_sync", "--dry-run")

    assert "nothing saved" in out and "3 created" in out and "1 customer linked" in out
    assert NomosSubscription.objects.count() == 0
    assert NomosCustomer.objects.count() == 0


# A walk of single-item pages as fast as it goes: what it fetches, not pacing.
@pytest.mark.sandbox_rate_limit(0)
@pytest.mark.django_db
def test_sync_walks_every_page_and_fetches_each_new_customer_once(nomos, users) -> None:
    for n in range(7):
        cus = nomos.add_customer(f"bulk{n}@example.com", id=f"cus_bulk_{n}")
        nomos.add_subscription(cus["id"], status="active")
        nomos.add_subscription(cus["id"], status="pending")
    nomos.reset_counts()

    out = run("nomos_sync", "--page-size", "4")

    total = 3 + 14
    assert NomosSubscription.objects.count() == total
    assert nomos.count("GET /subscriptions") == -(-total // 4)
    assert nomos.count("GET /customers/{id}") == 2 + 7
    assert f"Synced {total} subscriptions: {total} created" in out
    assert "  16 subscriptions..." in out


@pytest.mark.django_db
def test_sync_queries_per_subscription_are_bounded(nomos, users, django_assert_max_num_queries
                                                   ) -> None:
    for n in range(20):
        cus = nomos.add_customer(f"q{n}@example.com", id=f"cus_q_{n}")
        nomos.add_subscription(cus["id"], status="active")
    run("nomos_sync")  # first run creates; the second one only updates
    with django_assert_max_num_queries(23 * 12):
        run("nomos_sync")


@pytest.mark.django_db
def test_sync_of_a_customer_refuses_a_list_whose_filter_was_ignored(nomos, users) -> None:
    _point_alice_at(nomos, users["alice"])
    nomos.add_fault("GET /subscriptions", Fault(ignore_filters=True))

    message = command_error("nomos_sync", "--customer", seed.ACME)

    assert "does not match filter[customer][eq]=cus_sandbox_acme" in message
    assert "nothing from it was stored" in message
    assert NomosSubscription.objects.count() == 0
    assert NomosCustomer.objects.count() == 0


@pytest.mark.django_db
def test_sync_when_nomos_is_down_is_a_one_line_error(settings) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "MAX_RETRIES": 0}
    assert "is not reachable" in command_error("nomos_sync")


@pytest.mark.django_db
def test_sync_with_wrong_credentials_names_the_settings(nomos, settings) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "CLIENT_ID": "nobody"}
    assert "rejected the credentials" in command_error("nomos_sync")


@pytest.mark.parametrize("size", ["0", "101"])
def test_sync_rejects_a_page_size_out_of_range(size: str) -> None:
    assert "--page-size" in command_error("nomos_sync", "--page-size", size)


# -- --help and the exit code of a real process ----------------------------------------------


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", **env}
    return subprocess.run(
        [sys.executable, "-m", "django", *args], cwd=ROOT, env=environ, capture_output=True,
        text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize("name", ["nomos_trigger", "nomos_sync", "nomos_check_credentials"])
def test_every_operator_command_has_help(name: str) -> None:
    result = _manage(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and len(result.stdout) > 200


def test_a_failing_command_exits_1_with_one_line_on_stderr() -> None:
    # tests.settings points API_BASE_URL at port 9, where nothing listens.
    result = _manage("nomos_check_credentials", "--skip-checks")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [errors[0]] and errors[0].startswith("CommandError: Nomos at "), errors
    assert "sandbox-secret" not in result.stderr + result.stdout
