"""Every webhook envelope we produce validates against the document's schema for its topic:
the sandbox's (fired by itself, through the control API, and forwarded over HTTP),
``nomos_billing.testing.make_event``'s and ``nomos_trigger``'s (as posted, from the bytes).

``invoice.*`` and ``meter_order.*`` carry ``context.subscription`` (the document requires it).
``test.event`` is the dashboard's test delivery (API-NOTES); the document lists no schema for
it, so it is checked here by hand: the same envelope with an empty context.
"""

from __future__ import annotations

import json
import os
from io import StringIO
from typing import Any

import pytest

if not os.environ.get("NOMOS_OPENAPI_SPEC"):
    pytest.skip("NOMOS_OPENAPI_SPEC not set and ../shared not beside the checkout: no document "
                "to validate envelopes against", allow_module_level=True)

from django.core.management import call_command
from django.core.management.base import CommandError

from nomos_billing.sandbox import Sandbox, SandboxServer, seed
from nomos_billing.sandbox.forwarding import Forwarder
from nomos_billing.testing import make_event
from tests.contract import load_spec, topic_schemas, validate_envelope
from tests.receivers import Receiver

pytestmark = pytest.mark.django_db(databases=[])


@pytest.fixture(scope="module")
def spec() -> Any:
    return load_spec()


@pytest.fixture(scope="module")
def topics(spec: Any) -> list[str]:
    found = sorted(topic_schemas(spec))
    assert len(found) == 19, found  # 5 subscription, 5 invoice, 9 meter_order
    return found


def test_the_helper_refuses_an_envelope_that_breaks_its_topic(spec: Any) -> None:
    good = make_event("invoice.paid", {"invoice": "inv_1", "subscription": "sub_1"})
    validate_envelope(spec, good)
    for broken in ({**good, "context": {"invoice": "inv_1"}},   # no subscription
                   {**good, "topic": "invoice.refunded"},       # not a topic of the document
                   {k: v for k, v in good.items() if k != "timestamp"}):
        with pytest.raises(Exception):
            validate_envelope(spec, broken)


def test_every_topic_the_sandbox_fires_and_forwards_validates(
    spec: Any, topics: list[str], receiver: Receiver
) -> None:
    sb = Sandbox()
    sb.forwarder = Forwarder(sb, [receiver.url], "whsec_contract", retry_base=0.01)
    try:
        fired = [sb.announce(t, sb.event_context(t, seed.ALICE_SUBSCRIPTION)) for t in topics]
        with SandboxServer(sb) as server:
            import requests

            lead = sb.create_lead({"plan": "pln_sandbox_home", "address": {"zip": "10115"},
                                   "meter": {"estimated_usage": 2000}}, server.url)
            page = requests.post(f"{sb.checkout_origin()}/",
                                 allow_redirects=False, timeout=10, data={
                                     "id": lead["id"], "zip": "10115", "usage": "2000",
                                     "email": "l@example.com", "first_name": "L",
                                     "last_name": "Ead"})
            assert page.status_code == 303
            requests.post(f"{server.url}/_sandbox/subscriptions/{seed.ACME_FEED_IN}/status",
                          json={"status": "active"}, timeout=10).raise_for_status()
            requests.post(f"{server.url}/_sandbox/events", timeout=10, json={
                "topic": "meter_order.scheduled", "subscription": seed.ACME_FEED_IN,
            }).raise_for_status()
        assert sb.forwarder.wait_idle()
    finally:
        sb.forwarder.stop()
    delivered = [json.loads(body) for body in receiver.bodies]
    assert [e["id"] for e in delivered[:len(fired)]] == [e["id"] for e in fired]
    assert {e["topic"] for e in delivered} == set(topics)
    checkout_event = next(e for e in delivered if e["context"].get("lead") == lead["id"])
    assert checkout_event["topic"] == "subscription.created"
    for body in receiver.bodies:  # the bytes as sent
        validate_envelope(spec, body)
    for event in sb.events.values():  # and as GET /events/{id} answers
        validate_envelope(spec, event)
    assert len(receiver.bodies) == len(topics) + 3


def test_make_event_envelopes_validate(spec: Any, topics: list[str]) -> None:
    sb = Sandbox(seed=False)
    for topic in topics:
        validate_envelope(spec, make_event(topic, sb.event_context(topic, "sub_x")))
    test_event = make_event("test.event")
    assert set(test_event) == {"id", "timestamp", "topic", "context"}
    assert test_event["context"] == {}


def _trigger(rec: Receiver, topic: str, *args: str) -> dict[str, Any]:
    before = len(rec.bodies)
    call_command("nomos_trigger", topic, "--url", rec.url, *args, stdout=StringIO(),
                 stderr=StringIO())
    (body,) = rec.bodies[before:]
    return json.loads(body)


@pytest.mark.django_db
def test_every_topic_nomos_trigger_posts_validates(
    spec: Any, topics: list[str], receiver: Receiver
) -> None:
    for topic in topics:
        family = topic.split(".", 1)[0]
        extra = [] if family == "subscription" else ["--context", f"{family}=x_{family}"]
        if topic == "invoice.voided":
            extra += ["--context", "voiding_invoice=inv_credit"]
        event = _trigger(receiver, topic, "--subscription", "sub_trigger", *extra)
        validate_envelope(spec, event)
    event = _trigger(receiver, "subscription.created", "--subscription", "sub_t", "--lead",
                     "lead_t")
    validate_envelope(spec, event)
    test_event = _trigger(receiver, "test.event")
    assert (test_event["topic"], test_event["context"]) == ("test.event", {})


@pytest.mark.django_db
@pytest.mark.parametrize("topic", ["invoice.paid", "meter_order.created"])
def test_nomos_trigger_refuses_an_invoice_or_meter_order_without_its_subscription(
    receiver: Receiver, topic: str
) -> None:
    family = topic.split(".", 1)[0]
    with pytest.raises(CommandError, match="subscription"):
        call_command("nomos_trigger", topic, "--url", receiver.url, "--context",
                     f"{family}=x", stdout=StringIO(), stderr=StringIO())
    assert receiver.bodies == []


@pytest.mark.django_db
def test_nomos_trigger_refuses_a_voided_invoice_without_its_voiding_invoice(
    receiver: Receiver
) -> None:
    with pytest.raises(CommandError, match="voiding_invoice"):
        call_command("nomos_trigger", "invoice.voided", "--url", receiver.url, "--subscription",
                     "sub_1", "--context", "invoice=inv_1", stdout=StringIO(), stderr=StringIO())
    assert receiver.bodies == []
