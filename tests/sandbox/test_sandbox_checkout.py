"""The sandbox's hosted checkout, the events it delivers by itself (``--forward-to``), and
``--state FILE``: driven over HTTP, checked by what a receiver gets and what the API answers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from nomos_billing.sandbox import Sandbox, SandboxServer, seed
from nomos_billing.sandbox.forwarding import Forwarder
from nomos_billing.sandbox.hosts import checkout_origin
from nomos_billing.signatures import verify_signature
from tests.receivers import Receiver

SECRET = "whsec_forward"
PLAN = "pln_sandbox_home"


def forwarding(sb: Sandbox, *urls: str, **options: Any) -> Forwarder:
    sb.forwarder = Forwarder(sb, list(urls), SECRET, retry_base=0.01, **options)
    return sb.forwarder


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    sandbox = Sandbox()
    with SandboxServer(sandbox):
        yield sandbox
    if sandbox.forwarder is not None:
        sandbox.forwarder.stop()


def token(sb: Sandbox) -> dict[str, str]:
    return {"Authorization": f"Bearer {sb.issue_token()}"}


def sign_up(http: requests.Session, sb: Sandbox, link: str, **typed: str) -> requests.Response:
    """What a browser does: open the link, submit the form with what it shows plus ``typed``."""
    page = http.get(link)
    assert page.status_code == 200, page.text
    fields = dict(_inputs(page.text))
    fields.update(typed)
    return http.post(f"{sb.checkout_origin(PLAN)}/", data=fields, allow_redirects=False)


def _inputs(html: str) -> list[tuple[str, str]]:
    import re
    from html import unescape

    return [(unescape(n), unescape(v)) for n, v in
            re.findall(r'<input[^>]*name="([^"]*)" value="([^"]*)"', html)]


# -- the page -------------------------------------------------------------------------------


def test_checkout_from_url_parameters_persists_exactly_the_metadata_of_the_url(
    sb: Sandbox, http: requests.Session, receiver: Receiver
) -> None:
    forwarding(sb, receiver.url)
    link = (f"{sb.checkout_origin(PLAN)}/?zip=80331&usage=3200"
            "&metadata.django_user_id=1&metadata.campaign=%3Cb%3Ex")
    page = http.get(link)
    assert 'value="80331"' in page.text and 'value="3200"' in page.text
    assert 'value="&lt;b&gt;x"' in page.text  # escaped, never markup

    answer = sign_up(http, sb, link, email="eve@example.com", first_name="Eve",
                     last_name="Example")

    assert answer.status_code == 303
    sub_id = parse_qs(urlsplit(answer.headers["Location"]).query)["subscription"][0]
    sub = http.get(f"{sb.base_url}/subscriptions/{sub_id}", headers=token(sb)).json()
    assert sub["metadata"] == {"django_user_id": "1", "campaign": "<b>x"}
    assert (sub["plan"], sub["status"], sub["address"]["zip"], sub["estimated_usage"]) == (
        PLAN, "pending", "80331", 3200)
    assert sub["customer"]["email"] == "eve@example.com"
    assert http.get(f"{sb.checkout_origin(PLAN)}{answer.headers['Location']}").status_code == 200
    assert sb.forwarder is not None and sb.forwarder.wait_idle()
    (event,) = receiver.events
    assert (event["topic"], event["context"]) == ("subscription.created",
                                                  {"subscription": sub_id})
    assert verify_signature(receiver.bodies[0], receiver.headers[0]["X-Nomos-Signature"],
                            [SECRET]) == 0


def test_checkout_from_a_lead_carries_the_lead_and_redirects_to_the_plans_return_url(
    sb: Sandbox, http: requests.Session, receiver: Receiver
) -> None:
    forwarding(sb, receiver.url)
    sb.return_urls[PLAN] = "http://127.0.0.1:9/back/"
    lead = http.post(f"{sb.base_url}/leads", headers=token(sb), json={
        "plan": PLAN, "address": {"zip": "10115"}, "meter": {"estimated_usage": 2800},
        "customer": {"email": "bob@example.com", "first_name": "Bob", "last_name": "B"},
        "metadata": {"note": "the lead's own"},
    }).json()
    page = http.get(lead["link"]).text
    assert 'value="bob@example.com"' in page and 'value="10115"' in page
    assert 'value="2800"' in page

    answer = sign_up(http, sb, lead["link"])

    assert (answer.status_code, answer.headers["Location"]) == (303, "http://127.0.0.1:9/back/")
    converted = http.get(f"{sb.base_url}/leads/{lead['id']}", headers=token(sb)).json()
    assert converted["subscription"] and converted["subscribed_at"]
    assert sb.forwarder is not None and sb.forwarder.wait_idle()
    (event,) = receiver.events
    assert event["context"] == {"subscription": converted["subscription"], "lead": lead["id"]}
    again = http.get(lead["link"])
    assert again.status_code == 410


def test_checkout_link_of_a_magic_link_signs_up_that_customer_once(
    sb: Sandbox, http: requests.Session
) -> None:
    link = http.post(f"{sb.base_url}/admin/magic_link", headers=token(sb),
                     json={"customerId": seed.CAROL}).json()["link"]

    answer = sign_up(http, sb, link, zip="01067", usage="1800")

    assert answer.status_code == 303
    subs = [s for s in sb.subscriptions.values() if s["customer"] == seed.CAROL]
    assert [(s["address"]["zip"], s["estimated_usage"]) for s in subs] == [("01067", 1800)]
    assert http.get(link).status_code == 410
    portal = http.post(f"{sb.base_url}/admin/magic_link", headers=token(sb),
                       json={"customerId": seed.CAROL}).json()["link"]
    assert portal.startswith(sb.portal_origin + "/auth/confirm?")


@pytest.mark.parametrize(("typed", "field"), [
    ({"zip": "00000"}, "zip"),
    ({"zip": "1234"}, "zip"),
    ({"usage": "lots"}, "usage"),
    ({"usage": "50"}, "usage"),
    ({"email": "nope"}, "email"),
    ({"first_name": ""}, "first_name"),
])
def test_bad_input_shows_the_form_again_and_creates_nothing(
    sb: Sandbox, http: requests.Session, typed: dict[str, str], field: str
) -> None:
    before = (dict(sb.customers), dict(sb.subscriptions))
    values = {"zip": "10115", "usage": "2500", "email": "x@example.com", "first_name": "X",
              "last_name": "Y", **typed}
    answer = http.post(f"{sb.checkout_origin(PLAN)}/", data=values)
    assert answer.status_code == 400
    assert f'id="error-{field}"' in answer.text
    assert (sb.customers, sb.subscriptions) == before


def test_unknown_lead_is_404(sb: Sandbox, http: requests.Session) -> None:
    assert http.get(f"{sb.checkout_origin(PLAN)}/?id=lead_nope").status_code == 404


# -- forwarding -----------------------------------------------------------------------------


def test_a_failed_delivery_is_retried_until_acknowledged() -> None:
    rec = Receiver([500, 503, 200])
    sb = Sandbox()
    try:
        fwd = forwarding(sb, rec.url)
        event = sb.announce("subscription.activated", {"subscription": seed.ALICE_SUBSCRIPTION})
        assert fwd.wait_idle()
        assert [e["id"] for e in rec.events] == [event["id"]] * 3
        assert [(d["attempt"], d["status"]) for d in sb.webhook_deliveries] == [
            (1, 500), (2, 503), (3, 200)]
    finally:
        sb.forwarder.stop() if sb.forwarder else None
        rec.close()


def test_retries_stop_after_the_last_one() -> None:
    rec = Receiver([500] * 10)
    sb = Sandbox()
    try:
        fwd = forwarding(sb, rec.url, retries=3)
        sb.announce("test.event", {})
        assert fwd.wait_idle()
        assert len(rec.bodies) == 4
    finally:
        fwd.stop()
        rec.close()


def test_every_url_gets_every_event_and_duplicates_when_asked() -> None:
    one, two = Receiver(), Receiver()
    sb = Sandbox()
    try:
        fwd = forwarding(sb, one.url, two.url, duplicate=True)
        event = sb.announce("subscription.ended", {"subscription": seed.ALICE_SUBSCRIPTION})
        assert fwd.wait_idle()
        for rec in (one, two):
            assert [e["id"] for e in rec.events] == [event["id"], event["id"]]
    finally:
        fwd.stop()
        one.close()
        two.close()


def test_reorder_delivers_the_newer_event_first() -> None:
    rec = Receiver()
    sb = Sandbox()
    try:
        fwd = forwarding(sb, rec.url, reorder=True, hold=30)
        first = sb.announce("subscription.created", {"subscription": seed.ALICE_SUBSCRIPTION})
        second = sb.announce("subscription.confirmed", {"subscription": seed.ALICE_SUBSCRIPTION})
        assert fwd.wait_idle()
        assert [e["id"] for e in rec.events] == [second["id"], first["id"]]
    finally:
        fwd.stop()
        rec.close()


def test_status_changes_and_control_events_are_delivered(
    sb: Sandbox, http: requests.Session, receiver: Receiver
) -> None:
    fwd = forwarding(sb, receiver.url)
    http.post(f"{sb.base_url}/_sandbox/subscriptions/{seed.ACME_FEED_IN}/status",
              json={"status": "active"}).raise_for_status()
    http.post(f"{sb.base_url}/_sandbox/subscriptions/{seed.ACME_FEED_IN}/status",
              json={"status": "ended", "topic": "subscription.terminated"}).raise_for_status()
    http.post(f"{sb.base_url}/_sandbox/events", json={
        "topic": "invoice.paid", "context": {"invoice": "inv_1",
                                             "subscription": seed.ACME_FEED_IN}}
              ).raise_for_status()
    assert fwd.wait_idle()
    assert [e["topic"] for e in receiver.events] == [
        "subscription.activated", "subscription.terminated", "invoice.paid"]
    listed = http.get(f"{sb.base_url}/_sandbox/deliveries").json()
    assert [d["status"] for d in listed["deliveries"]] == [200, 200, 200]
    assert listed["pending"] == 0


# -- --state FILE ---------------------------------------------------------------------------


def test_state_file_keeps_the_data_across_restarts(tmp_path: Path,
                                                   http: requests.Session) -> None:
    path = str(tmp_path / "sandbox.json")
    first = Sandbox()
    assert first.use_state_file(path) is False
    with SandboxServer(first):
        link = f"{first.checkout_origin(PLAN)}/?metadata.k=v"
        answer = sign_up(http, first, link, zip="10115", usage="2000",
                         email="kept@example.com", first_name="K", last_name="Ept")
        assert answer.status_code == 303
        http.post(f"{first.base_url}/_sandbox/subscriptions/{seed.ACME_FEED_IN}/status",
                  json={"status": "active"}).raise_for_status()

    again = Sandbox()
    assert again.use_state_file(path) is True
    assert again.customers == first.customers
    assert again.subscriptions == first.subscriptions
    assert again.events == first.events
    assert again.subscriptions[seed.ACME_FEED_IN]["status"] == "active"


def test_a_file_that_is_not_a_state_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a sandbox state"):
        Sandbox().use_state_file(str(path))
    assert path.read_text() == '{"hello": 1}'


# -- the command line -----------------------------------------------------------------------


def _run_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nomos_billing.sandbox", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _banner(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    lines = []
    while not lines or lines[-1] != "Ctrl-C to stop.":
        line = proc.stdout.readline()
        assert line, "".join(lines)
        lines.append(line.rstrip("\n"))
    return "\n".join(lines)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0


def test_help_documents_the_control_api_and_options() -> None:
    out = subprocess.run([sys.executable, "-m", "nomos_billing.sandbox", "--help"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    for text in ("--forward-to URL", "--state FILE", "--duplicate", "--reorder", "--return-url",
                 "POST   /_sandbox/subscriptions/{id}/status", "POST   /_sandbox/events",
                 "GET    /_sandbox/deliveries", "<plan-slug>.checkout.localhost/",
                 "sandbox.customerportal.localhost/auth/confirm", "ignore_filters"):
        assert text in out, text


def test_cli_forwards_a_checkout_and_keeps_its_state(tmp_path: Path, receiver: Receiver,
                                                     http: requests.Session) -> None:
    state = tmp_path / "state.json"
    args = ("--state", str(state), "--forward-to", receiver.url, "--webhook-secret", SECRET,
            "--return-url", f"{PLAN}=http://127.0.0.1:9/welcome")
    with _run_cli(*args) as proc:
        try:
            text = _banner(proc)
            url = re.search(r"http://127\.0\.0\.1:\d+", text).group(0)  # type: ignore[union-attr]
            assert f"state: {state} (new file)" in text
            assert f"forwarding events to {receiver.url}" in text
            assert f"after checkout ({PLAN}): http://127.0.0.1:9/welcome" in text
            assert "POST   /_sandbox/events" in text
            answer = http.post(checkout_origin(url, PLAN) + "/", allow_redirects=False, data={
                "zip": "10115", "usage": "2500", "email": "cli@example.com",
                "first_name": "C", "last_name": "Li"})
            assert answer.headers["Location"] == "http://127.0.0.1:9/welcome"
            for _ in range(200):
                if http.get(f"{url}/_sandbox/deliveries").json()["deliveries"]:
                    break
                time.sleep(0.05)
            assert [e["topic"] for e in receiver.events] == ["subscription.created"]
            _stop(proc)
        finally:
            if proc.poll() is None:
                proc.kill()

    with _run_cli("--state", str(state)) as proc:
        try:
            text = _banner(proc)
            url = re.search(r"http://127\.0\.0\.1:\d+", text).group(0)  # type: ignore[union-attr]
            assert f"state: {state} (loaded)" in text
            emails = {c["email"] for c in http.get(f"{url}/_sandbox/state").json()[
                "customers"].values()}
            assert "cli@example.com" in emails
            _stop(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
