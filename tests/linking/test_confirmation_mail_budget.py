"""A held link's confirmation mail keeps to the request's time budget (and ``check --deploy``
says when the site's SMTP has no timeout at all).

Django's SMTP backend waits for ever unless the site sets a timeout. Each test starts a mail
server on loopback that accepts connections and never says a word, points the site's default
mailer at it with no timeout, and measures how long a webhook, a "send again" click or a
command takes: the budget, not the server, decides.
"""

from __future__ import annotations

import socket
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from typing import Any
from unittest import mock

import django
import pytest
from django.core import mail
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from nomos_billing import confirmation
from nomos_billing.checks_deploy import W_MAIL_NO_TIMEOUT, check_mail_timeout
from nomos_billing.models import NomosLinkClaim
from nomos_billing.testing import post_event
from tests.linking.test_confirmation import (  # noqa: F401 - fixtures
    VICTIM,
    deliver,
    finish_checkout,
    lead_of,
    mallory,
    plan,
    signed_in,
)

SMTP = "django.core.mail.backends.smtp.EmailBackend"
MAILERS = django.VERSION >= (6, 1)


class SilentMailServer:
    """Accepts SMTP connections on loopback and never answers (not even the greeting)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)  # so that stop() ends the accept loop promptly
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted.append(conn)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def smtp_to(settings: Any, port: int, timeout: float | None = None) -> None:
    """Point the site's default mailer at SMTP on loopback ``port``, timeout as given."""
    if MAILERS:
        options: dict[str, Any] = {"host": "127.0.0.1", "port": port}
        if timeout is not None:
            options["timeout"] = timeout
        settings.MAILERS = {"default": {"BACKEND": SMTP, "OPTIONS": options}}
    else:
        settings.EMAIL_BACKEND = SMTP
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
        settings.EMAIL_TIMEOUT = timeout


@pytest.fixture
def silent_smtp() -> Iterator[SilentMailServer]:
    server = SilentMailServer()
    try:
        yield server
    finally:
        server.stop()


def budgets(settings: Any, **values: float) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, **values}


@pytest.fixture
def held_claim(
    nomos, plan, mallory, django_capture_on_commit_callbacks  # noqa: F811
) -> NomosLinkClaim:
    """A held claim whose first mail went out (locmem), as in test_confirmation."""
    subscription = finish_checkout(nomos, VICTIM, lead_id=lead_of(mallory))
    deliver(nomos, subscription, django_capture_on_commit_callbacks)
    assert len(mail.outbox) == 1
    return NomosLinkClaim.objects.get()


@pytest.mark.django_db(transaction=True)
def test_a_silent_mail_server_costs_a_webhook_its_budget_not_more(
    nomos, plan, mallory, silent_smtp, settings, caplog  # noqa: F811
):
    # transaction=True: the mail leaves on the real commit, inside the webhook's request.
    smtp_to(settings, silent_smtp.port)
    budgets(settings, WEBHOOK_BUDGET=2)
    subscription = finish_checkout(nomos, VICTIM, lead_id=lead_of(mallory))
    event = nomos.build_event("subscription.created", {"subscription": subscription["id"]})

    started = time.monotonic()
    response = post_event(Client(), event)
    took = time.monotonic() - started

    assert response.status_code == 200
    assert silent_smtp.accepted, "the mail server was never asked"
    assert 1 < took < 2 + 1.5, f"the webhook took {took:.1f} s with a 2 s budget"
    assert NomosLinkClaim.objects.get().status == "pending"  # "send again" or an operator
    assert any("could not be sent (" in r.getMessage() for r in caplog.records)


@pytest.mark.django_db
def test_a_silent_mail_server_costs_send_again_the_click_budget(
    held_claim, mallory, silent_smtp, settings  # noqa: F811
):
    smtp_to(settings, silent_smtp.port)
    budgets(settings, CLICK_BUDGET=1)
    later = timezone.now() + confirmation.RESEND_INTERVAL + timedelta(seconds=1)
    client = signed_in(mallory)

    started = time.monotonic()
    with mock.patch("nomos_billing.confirmation.timezone.now", return_value=later):
        response = client.post("/nomos/link/resend/")
    took = time.monotonic() - started

    assert response.status_code == 503  # the page's "could not be sent, try again later"
    assert silent_smtp.accepted
    assert 0.5 < took < 1 + 1.5, f"send again took {took:.1f} s with a 1 s click budget"
    assert NomosLinkClaim.objects.get().status == "pending"


@pytest.mark.django_db
def test_outside_any_budget_the_mail_waits_mail_timeout(
    held_claim, silent_smtp, settings, monkeypatch
):
    # A management command opens no budget; the site set no timeout: MAIL_TIMEOUT bounds it.
    smtp_to(settings, silent_smtp.port)
    monkeypatch.setattr(confirmation, "MAIL_TIMEOUT", 0.5)

    started = time.monotonic()
    sent = confirmation.send_confirmation(held_claim)
    took = time.monotonic() - started

    assert sent is False
    assert silent_smtp.accepted
    assert 0.4 < took < 0.5 + 1.5, took


@pytest.mark.django_db
def test_a_shorter_timeout_of_the_site_is_kept(held_claim, silent_smtp, settings):
    smtp_to(settings, silent_smtp.port, timeout=0.3)
    from nomos_billing import budget

    started = time.monotonic()
    with budget.limit(10):
        sent = confirmation.send_confirmation(held_claim)
    took = time.monotonic() - started

    assert sent is False
    assert took < 0.3 + 1.5, f"{took:.1f} s: the site's own 0.3 s timeout was not kept"


@pytest.mark.django_db
def test_a_mail_committed_after_its_budget_ran_out_is_not_attempted(
    nomos, plan, mallory, silent_smtp, settings, django_capture_on_commit_callbacks,  # noqa: F811
    caplog,
):
    # The commit comes after the budget is gone (an outer transaction that ends late): the
    # mail keeps to the budget the link was held in, and gives up at once.
    smtp_to(settings, silent_smtp.port)
    budgets(settings, WEBHOOK_BUDGET=1)
    subscription = finish_checkout(nomos, VICTIM, lead_id=lead_of(mallory))
    event = nomos.build_event("subscription.created", {"subscription": subscription["id"]})
    with django_capture_on_commit_callbacks() as callbacks:
        assert post_event(Client(), event).status_code == 200
    time.sleep(1.1)
    for callback in callbacks:
        callback()

    assert callbacks and not silent_smtp.accepted
    assert any("no time left in this request's budget for the confirmation mail"
               in r.getMessage() for r in caplog.records)


# -- check --deploy: nomos_billing.W062 ----------------------------------------------------


def _mailer(settings: Any, backend: str, timeout: float | None) -> None:
    if MAILERS:
        options = {"host": "127.0.0.1"} if backend == SMTP else {}
        if timeout is not None:
            options["timeout"] = timeout
        settings.MAILERS = {"default": {"BACKEND": backend, "OPTIONS": options}}
    else:
        settings.EMAIL_BACKEND, settings.EMAIL_TIMEOUT = backend, timeout


@pytest.mark.parametrize(
    ("backend", "timeout", "warned"),
    [
        (SMTP, None, True),
        (SMTP, 10, False),
        ("django.core.mail.backends.console.EmailBackend", None, False),
        ("django.core.mail.backends.locmem.EmailBackend", None, False),
    ],
    ids=["smtp without timeout", "smtp with timeout", "console", "locmem"],
)
def test_deploy_check_warns_of_smtp_without_a_timeout(settings, backend, timeout, warned):
    _mailer(settings, backend, timeout)
    found = check_mail_timeout()
    assert [m.id for m in found] == ([W_MAIL_NO_TIMEOUT] if warned else [])
    if warned:
        assert "EMAIL_TIMEOUT" in found[0].hint and not found[0].is_serious()


@pytest.mark.skipif(not MAILERS, reason="MAILERS is Django 6.1's")
@pytest.mark.filterwarnings("ignore:The EMAIL_")
def test_deploy_check_reads_email_settings_when_a_61_site_has_no_mailers(settings):
    # The check itself reads them without a warning (Django warns the site once already).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        del settings.MAILERS
        settings.EMAIL_BACKEND, settings.EMAIL_TIMEOUT = SMTP, None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [m.id for m in check_mail_timeout()] == [W_MAIL_NO_TIMEOUT]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        settings.EMAIL_TIMEOUT = 5
    assert check_mail_timeout() == []


@pytest.mark.django_db
def test_only_check_deploy_says_it(settings):
    # The README's install test asserts plain `check` says "no issues": W062 is deploy-only.
    _mailer(settings, SMTP, None)
    plain = StringIO()
    call_command("check", stdout=plain, stderr=plain)
    assert W_MAIL_NO_TIMEOUT not in plain.getvalue()
    deploy = StringIO()
    call_command("check", "--deploy", "--fail-level", "CRITICAL", stdout=deploy, stderr=deploy)
    assert W_MAIL_NO_TIMEOUT in deploy.getvalue()
