"""The webhook endpoint, black-box: signed posts through Django's test client, judged by the
status, the rows left behind and the calls the live sandbox counted."""

from __future__ import annotations

import io
import json
import logging
import threading
from datetime import timedelta
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from django.core.exceptions import SuspiciousOperation
from django.core.handlers.asgi import ASGIRequest
from django.db import InterfaceError, OperationalError, connection, connections
from django.db.backends.utils import CursorWrapper
from django.test import Client
from django.utils import timezone

from nomos_billing import exceptions, signals, signatures
from nomos_billing.models import NomosCustomer, NomosSubscription, WebhookEvent
from nomos_billing.sandbox import Fault, seed
from nomos_billing.signatures import HEADER, compute_signature
from nomos_billing.testing import encode_event, make_event, post_event, sign_payload
from nomos_billing.webhooks import WebhookView
from tests.concurrency import is_claim, meet_at

URL = "/nomos/webhook/"
SECRET = "whsec_test_new"
OLD_SECRET = "whsec_test_old"
SUB_GET = "GET /subscriptions/{id}"

pytestmark = pytest.mark.django_db


def alice_event(topic: str = "subscription.created", **kwargs: Any) -> dict[str, Any]:
    return make_event(topic, {"subscription": seed.ALICE_SUBSCRIPTION}, **kwargs)


def post_raw(client: Client, body: bytes, header: str | None, **extra: Any) -> Any:
    headers = {HEADER: header} if header is not None else {}
    return client.post(URL, data=body, content_type="application/json", headers=headers, **extra)


def nothing_stored() -> bool:
    return not (WebhookEvent.objects.exists() or NomosCustomer.objects.exists()
                or NomosSubscription.objects.exists())


def assert_rows_match_sandbox(sandbox: Any, sub_id: str = seed.ALICE_SUBSCRIPTION) -> None:
    remote = sandbox.subscription_view(sub_id)
    sub = NomosSubscription.objects.select_related("customer").get(subscription_id=sub_id)
    assert sub.status == remote["status"]
    assert sub.plan == remote["plan"]
    assert sub.type == remote["type"]
    assert sub.number == remote["number"]
    assert sub.metadata == (remote["metadata"] or {})
    assert sub.customer.customer_id == remote["customer"]["id"]
    assert sub.customer.email == remote["customer"]["email"]
    assert sub.customer.first_name == remote["customer"]["first_name"]
    assert sub.customer.last_name == remote["customer"]["last_name"]
    assert sub.customer.type == remote["customer"]["type"]
    assert NomosSubscription.objects.filter(subscription_id=sub_id).count() == 1


# -- a valid delivery -------------------------------------------------------------------------


def test_valid_delivery_answers_200_and_stores_the_sandbox_state(nomos, client):
    event = alice_event()
    response = post_event(client, event)
    assert response.status_code == 200, response.content
    assert_rows_match_sandbox(nomos)
    stored = WebhookEvent.objects.get()
    assert (stored.event_id, stored.topic, stored.status) == (
        event["id"], "subscription.created", "processed")
    assert stored.payload == event
    assert (stored.attempts, stored.deliveries, stored.secret_index) == (1, 1, 0)
    assert stored.processed_at is not None and stored.claimed_at is None
    assert nomos.count(SUB_GET) == 1


def test_company_customer_and_status_change_are_stored(nomos, client):
    nomos.set_subscription_status(seed.ACME_FEED_IN, "active")
    response = post_event(client, make_event("subscription.activated",
                                             {"subscription": seed.ACME_FEED_IN}))
    assert response.status_code == 200
    assert_rows_match_sandbox(nomos, seed.ACME_FEED_IN)
    customer = NomosCustomer.objects.get(customer_id=seed.ACME)
    assert (customer.type, customer.company_name) == ("company", "Acme Energie GmbH")


# -- verification failures: 400, nothing stored, never 500 ----------------------------------


def _signed(body: bytes, secret: str = SECRET, t: int | None = None) -> str:
    return sign_payload(body, secret, NOW if t is None else t)


NOW = 1_780_000_000


@pytest.fixture
def frozen_clock(monkeypatch) -> int:
    """Signature checks see ``NOW`` as the current time (no second boundary to race)."""
    monkeypatch.setattr(signatures, "time", SimpleNamespace(time=lambda: float(NOW)))
    return NOW


def _bad_cases() -> list[tuple[str, Any]]:
    """(name, fn(body) -> (body_to_send, header)); signed at ``NOW``."""
    now = NOW

    def pretty_json(body: bytes) -> tuple[bytes, str]:
        # A valid signature over the same event re-serialised: the raw bytes differ.
        reserialised = json.dumps(json.loads(body), indent=2).encode()
        return body, _signed(reserialised)

    def one_byte_changed(body: bytes) -> tuple[bytes, str]:
        header = _signed(body)
        return body.replace(b"sub_sandbox_alice", b"sub_sandbox_alicf"), header

    return [
        ("wrong secret", lambda b: (b, _signed(b, "whsec_wrong"))),
        ("body changed by one byte", one_byte_changed),
        ("timestamp 301 s old", lambda b: (b, _signed(b, t=now - 301))),
        ("timestamp 301 s ahead", lambda b: (b, _signed(b, t=now + 301))),
        ("header missing", lambda b: (b, None)),
        ("header empty", lambda b: (b, "")),
        ("without t", lambda b: (b, "v1=" + compute_signature(SECRET, now, b))),
        ("without v1", lambda b: (b, f"t={now}")),
        ("non-numeric t", lambda b: (b, f"t=abc,v1={compute_signature(SECRET, now, b)}")),
        ("non-hex v1", lambda b: (b, f"t={now},v1={'z' * 64}")),
        ("10 KB header", lambda b: (b, _signed(b) + ",v0=" + "a" * 10_240)),
        ("signature over re-serialised JSON", pretty_json),
        ("v1 truncated", lambda b: (b, _signed(b)[:-1])),
        ("garbage", lambda b: (b, "\x00\x01garbage")),
    ]


@pytest.mark.parametrize(("name", "make"), _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_unverifiable_delivery_is_rejected_with_400_and_nothing_is_stored(
    name, make, nomos, client, frozen_clock
):
    body, header = make(encode_event(alice_event()))
    response = post_raw(client, body, header)
    assert response.status_code == 400, (name, response.status_code, response.content)
    assert response["Content-Type"].startswith("text/plain")
    assert nothing_stored()
    assert nomos.count(SUB_GET) == 0


def test_signature_mismatch_logs_one_warning_naming_the_setting(client, caplog, frozen_clock):
    body = encode_event(alice_event())
    with caplog.at_level(logging.DEBUG, logger="nomos_billing"):
        response = post_raw(client, body, _signed(body, "whsec_wrong"))
    assert response.status_code == 400
    records = [r for r in caplog.records if r.name == "nomos_billing.webhooks"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "NOMOS_BILLING['WEBHOOK_SECRETS']" in records[0].getMessage()
    assert "whsec" not in records[0].getMessage()


def test_header_with_two_v1_values_one_valid_is_accepted(nomos, client, frozen_clock):
    body = encode_event(alice_event())
    now = frozen_clock
    header = f"t={now},v1={'0' * 64},v1={compute_signature(SECRET, now, body)}"
    assert post_raw(client, body, header).status_code == 200
    assert WebhookEvent.objects.get().status == "processed"


def test_rotated_out_secret_still_listed_is_accepted_and_its_index_recorded(nomos, client):
    response = post_event(client, alice_event(), secret=OLD_SECRET)
    assert response.status_code == 200
    assert WebhookEvent.objects.get().secret_index == 1


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_timestamp_inside_tolerance_is_accepted(skew, nomos, client, frozen_clock):
    response = post_event(client, alice_event(), timestamp=frozen_clock + skew)
    assert response.status_code == 200


# -- methods, size, envelope ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_other_methods_answer_405_with_allow_post(method, client):
    response = getattr(client, method)(URL)
    assert response.status_code == 405
    assert response["Allow"] == "POST"


def test_body_over_max_bytes_answers_413_without_storing(settings, client):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "WEBHOOK_MAX_BYTES": 1024}
    event = alice_event()
    event["padding"] = "x" * 2000
    response = post_event(client, event)
    assert response.status_code == 413
    assert nothing_stored()


def test_body_at_max_bytes_is_read(nomos, settings, client):
    event = alice_event()
    size = len(encode_event(event))
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "WEBHOOK_MAX_BYTES": size}
    assert post_event(client, event).status_code == 200


def test_body_without_content_length_is_cut_at_the_limit(settings, frozen_clock):
    # Under ASGI a chunked body arrives without Content-Length; the view must stop reading
    # at limit + 1 bytes instead of trusting the header.
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "WEBHOOK_MAX_BYTES": 1024}
    body = b'{"id":"evt_big","topic":"invoice.paid","x":"' + b"x" * 5000 + b'"}'
    scope = {
        "type": "http", "method": "POST", "path": URL, "query_string": b"",
        "headers": [(b"content-type", b"application/json"),
                    (b"x-nomos-signature", _signed(body).encode())],
    }
    request = ASGIRequest(scope, io.BytesIO(body))
    assert "CONTENT_LENGTH" not in request.META
    response = WebhookView.as_view()(request)
    assert response.status_code == 413
    assert nothing_stored()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", b"not JSON"),
        (b"\xff\xfe\xfa", b"not JSON"),
        (b'{"id": "evt_1", "topic": NaN}', b"not JSON"),
        (b"[" * 5000 + b"]" * 5000, b"JSON"),  # 3.13 parses deep nesting: a list, not an object
        (b"[1, 2]", b"not a JSON object"),
        (b'"evt_1"', b"not a JSON object"),
        (b'{"topic": "subscription.created", "context": {}}', b"no valid id"),
        (b'{"id": "", "topic": "invoice.paid"}', b"no valid id"),
        (b'{"id": 42, "topic": "invoice.paid"}', b"no valid id"),
        (b'{"id": "' + b"e" * 65 + b'", "topic": "invoice.paid"}', b"no valid id"),
        (b'{"id": "evt_1", "context": {}}', b"no valid topic"),
        (b'{"id": "evt_1", "topic": ["a"]}', b"no valid topic"),
    ],
)
def test_signed_body_that_is_not_an_event_answers_400(body, reason, client, frozen_clock):
    response = post_raw(client, body, _signed(body))
    assert response.status_code == 400
    assert reason in response.content
    assert nothing_stored()


def test_unknown_topic_answers_200_and_is_stored_as_ignored(nomos, client):
    response = post_event(client, make_event("plan.invented", {"plan": "pln_x"}))
    assert response.status_code == 200
    assert WebhookEvent.objects.get().status == "ignored"
    assert nomos.calls.total() == 0


def test_test_event_without_id_is_acknowledged_and_not_stored(client, connect_receiver):
    received = connect_receiver(signals.webhook_received)
    response = post_event(client, {"topic": "test.event"})
    assert response.status_code == 200
    assert nothing_stored() and not received.called


def test_test_event_with_id_is_stored_as_processed(client):
    response = post_event(client, make_event("test.event"))
    assert response.status_code == 200
    assert WebhookEvent.objects.get().status == "processed"


@pytest.mark.parametrize("topic", ["invoice.paid", "meter_order.scheduled"])
def test_invoice_and_meter_order_events_are_processed_and_announced(
    topic, nomos, client, connect_receiver
):
    seen = []

    def receiver(sender, event, **kwargs):
        seen.append((event.event_id, event.status))

    connect_receiver(signals.webhook_processed, receiver)
    event = make_event(topic, {"invoice": "inv_1"})
    assert post_event(client, event).status_code == 200
    assert seen == [(event["id"], "processed")]
    assert nomos.calls.total() == 0


# -- CSRF, login, transactions ----------------------------------------------------------------


def test_valid_delivery_passes_enforced_csrf_checks(nomos):
    response = post_event(Client(enforce_csrf_checks=True), alice_event())
    assert response.status_code == 200


def test_valid_delivery_passes_login_required_middleware(nomos, client, settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE,
                           "django.contrib.auth.middleware.LoginRequiredMiddleware"]
    response = post_event(client, alice_event())
    assert response.status_code == 200
    # The middleware is active: other pages redirect to the login page.
    assert client.get("/admin/nomos_billing/").status_code == 302


@pytest.fixture
def atomic_requests(monkeypatch):
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)


@pytest.mark.django_db(transaction=True)
def test_atomic_requests_site_keeps_the_failure_record_of_an_outage(
    atomic_requests, nomos, client, settings
):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "MAX_RETRIES": 0}
    nomos.add_fault(SUB_GET, Fault(status=500), times=None)
    response = post_event(client, alice_event())
    assert response.status_code == 503
    event = WebhookEvent.objects.get()
    assert (event.status, event.attempts) == ("failed", 1)


@pytest.mark.django_db(transaction=True)
def test_atomic_requests_site_keeps_the_failure_record_when_a_receiver_crashes(
    atomic_requests, nomos, settings, connect_receiver
):
    def broken(**kwargs):
        raise RuntimeError("site bug")

    connect_receiver(signals.webhook_processed, broken)
    response = post_event(Client(raise_request_exception=False), alice_event())
    signals.webhook_processed.disconnect(broken)  # off for the retry below
    assert response.status_code == 500
    event = WebhookEvent.objects.get()
    assert event.status == "failed"
    assert event.last_error == "RuntimeError: site bug"
    # The rows were stored in their own transaction; the redelivery re-syncs idempotently.
    assert post_event(Client(), event.payload).status_code == 200
    assert WebhookEvent.objects.get().status == "processed"


# -- exactly once ------------------------------------------------------------------------------


def test_same_event_delivered_five_times_is_processed_once(nomos, client, connect_receiver):
    received = connect_receiver(signals.webhook_received)
    event = alice_event()
    statuses = [post_event(client, event).status_code for _ in range(5)]
    assert statuses == [200] * 5
    assert nomos.count(SUB_GET) == 1
    received.assert_called_once()
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.attempts, stored.deliveries) == ("processed", 1, 5)


def test_duplicate_of_processed_event_answers_at_once_with_one_query(
    nomos, client, django_assert_max_num_queries
):
    event = alice_event()
    assert post_event(client, event).status_code == 200
    nomos.reset_counts()
    with django_assert_max_num_queries(1):
        response = post_event(client, event)
    assert (response.status_code, response.content) == (200, b"already processed\n")
    assert nomos.calls.total() == 0


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_deliveries_process_once_without_5xx(nomos, frozen_clock):
    # Slow Nomos: the other deliveries arrive while the first is still processing.
    nomos.add_fault(SUB_GET, Fault(latency=0.5), times=None)
    body = encode_event(alice_event())
    start = threading.Barrier(20)
    statuses: list[int] = []
    lock = threading.Lock()

    claim = threading.Barrier(20)

    def deliver() -> None:
        try:
            client = Client(raise_request_exception=False)
            start.wait()
            # Every delivery reaches its claim before any of them claims: the worst interleaving.
            with meet_at(claim, is_claim):
                response = client.post(URL, data=body, content_type="application/json",
                                       headers={HEADER: _signed(body)})
            with lock:
                statuses.append(response.status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=deliver) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not claim.broken, "the deliveries did not all reach a claiming statement"
    assert len(statuses) == 20
    # 409 for those that met the first one's claim: Nomos redelivers them, and they find it done.
    assert all(s in (200, 409) for s in statuses) and 200 in statuses, statuses
    assert nomos.count(SUB_GET) == 1
    event = WebhookEvent.objects.get()
    assert (event.status, event.attempts, event.deliveries) == ("processed", 1, 20)
    assert NomosSubscription.objects.count() == 1


@pytest.mark.parametrize(
    "order",
    [("subscription.created", "subscription.confirmed"),
     ("subscription.confirmed", "subscription.created")],
    ids=["in order", "confirmed first"],
)
def test_out_of_order_events_end_in_the_same_rows(order, nomos, client):
    nomos.set_subscription_status(seed.ALICE_SUBSCRIPTION, "active")
    for topic in order:
        assert post_event(client, alice_event(topic)).status_code == 200
    assert_rows_match_sandbox(nomos)
    assert NomosCustomer.objects.count() == 1
    assert list(WebhookEvent.objects.values_list("status", flat=True)) == ["processed"] * 2


def test_outage_answers_503_and_redelivery_after_recovery_processes(nomos, client, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "MAX_RETRIES": 0}
    nomos.add_fault(SUB_GET, Fault(status=500, retry_after=3), times=None)
    event = alice_event()
    response = post_event(client, event)
    assert response.status_code == 503
    assert response["Retry-After"] == "3"
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.attempts) == ("failed", 1)
    assert "500" in stored.last_error and "Bearer" not in stored.last_error
    assert not NomosSubscription.objects.exists()

    nomos.clear_faults()
    assert post_event(client, event).status_code == 200
    stored.refresh_from_db()
    assert (stored.status, stored.attempts, stored.last_error) == ("processed", 2, "")
    assert_rows_match_sandbox(nomos)
    assert NomosCustomer.objects.count() == 1


def test_unreachable_nomos_answers_503(client, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "MAX_RETRIES": 0}  # port 9: refused
    response = post_event(client, alice_event())
    assert response.status_code == 503
    assert WebhookEvent.objects.get().status == "failed"


def test_subscription_unknown_to_nomos_is_failed_but_acknowledged(nomos, client, settings):
    # Past NOT_FOUND_RETRY_WINDOW (here: no window) a 404 is final; see
    # test_processing_not_readable.py.
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "NOT_FOUND_RETRY_WINDOW": 0}
    response = post_event(client, make_event("subscription.created",
                                             {"subscription": "sub_missing"}))
    assert response.status_code == 200
    assert b"will not succeed" in response.content
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.attempts) == ("failed", 1)
    assert "404" in stored.last_error


def test_subscription_event_without_subscription_in_context_is_failed(nomos, client):
    response = post_event(client, make_event("subscription.created", {}))
    assert response.status_code == 200
    assert WebhookEvent.objects.get().status == "failed"
    assert nomos.calls.total() == 0


def test_rejected_credentials_answer_503_so_nomos_redelivers(nomos, client, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "CLIENT_SECRET": "wrong"}
    response = post_event(client, alice_event())
    assert response.status_code == 503
    assert WebhookEvent.objects.get().status == "failed"


# -- claims ----------------------------------------------------------------------------------


def _claimed_event(age: timedelta) -> dict[str, Any]:
    event = alice_event()
    WebhookEvent.objects.create(event_id=event["id"], topic=event["topic"], payload=event,
                                status="processing", attempts=1,
                                claimed_at=timezone.now() - age)
    return event


@pytest.mark.parametrize(
    ("age", "retry_after"),
    [(timedelta(seconds=5), 55), (timedelta(seconds=40), 20),
     (timedelta(seconds=58), 2)],
    ids=["fresh claim", "claim older than the sender's timeout", "claim about to go stale"],
)
def test_delivery_during_processing_elsewhere_is_409_until_the_claim_goes_stale(
        age, retry_after, nomos, client):
    # Never a 2xx: the worker holding the claim may die, and Nomos must keep redelivering.
    event = _claimed_event(age)
    response = post_event(client, event)
    assert response.status_code == 409
    # Seconds until the claim goes stale, counted when the request ran: a loaded machine may
    # take a moment between creating the claim and answering.
    assert retry_after - 1 <= int(response["Retry-After"]) <= retry_after
    assert response.content == b"in progress elsewhere; please redeliver later\n"
    assert nomos.count(SUB_GET) == 0
    assert WebhookEvent.objects.get().status == "processing"


def test_stale_claim_of_a_crashed_worker_is_taken_over(nomos, client):
    event = _claimed_event(timedelta(seconds=65))  # CLAIM_TIMEOUT is 60 s
    assert post_event(client, event).status_code == 200
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.attempts) == ("processed", 2)
    assert nomos.count(SUB_GET) == 1


def test_event_recorded_but_never_processed_is_processed_on_redelivery(nomos, client):
    event = alice_event()
    WebhookEvent.objects.create(event_id=event["id"], topic=event["topic"], payload=event)
    assert post_event(client, event).status_code == 200
    assert WebhookEvent.objects.get().status == "processed"


@pytest.mark.parametrize("empty", [[], "", [""]])
def test_empty_webhook_secrets_answer_503_and_tell_the_operator_once(
    client: Client, nomos: Any, settings: Any, caplog: pytest.LogCaptureFixture, empty: Any
) -> None:
    # Nothing is wrong with the sender: a 4xx would tell Nomos to stop, a 503 keeps the
    # deliveries coming until the secret is set; the log names the setting, not a mismatch.
    event = alice_event()
    body = encode_event(event)
    header = sign_payload(body, SECRET)
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "WEBHOOK_SECRETS": empty}
    caplog.set_level(logging.INFO)

    first = post_raw(client, body, header)
    second = post_raw(client, body, header)

    for response in (first, second):
        assert response.status_code == 503
        assert b"not configured" in response.content
    assert nothing_stored()
    assert nomos.calls == {}
    errors = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.ERROR and r.name.startswith("nomos_billing")]
    assert len(errors) == 1, errors
    assert "WEBHOOK_SECRETS" in errors[0] and "empty" in errors[0]
    assert not any("matches none" in r.getMessage() for r in caplog.records)

    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "WEBHOOK_SECRETS": [SECRET]}
    assert post_raw(client, body, header).status_code == 200


@pytest.mark.parametrize("error", [
    OperationalError("connection failed: Connection refused"),
    OperationalError("canceling statement due to statement timeout"),
    InterfaceError("connection already closed"),
], ids=["refused", "statement timeout", "dropped"])
def test_database_outage_answers_503_so_nomos_redelivers(error, nomos, client, caplog):
    event = alice_event()
    with mock.patch.object(CursorWrapper, "execute", side_effect=error):
        response = post_event(client, event)
    assert (response.status_code, response["Retry-After"]) == (503, "30")
    assert response.content == b"the database is unavailable; please redeliver\n"
    assert "the database is unavailable" in caplog.text
    assert nomos.count(SUB_GET) == 0
    # The redelivery, with the database back, is processed.
    assert post_event(client, event).status_code == 200
    assert WebhookEvent.objects.get().status == "processed"


@pytest.mark.parametrize("name", [
    "WebhookError", "WebhookSignatureMissing", "WebhookSignatureMalformed",
    "WebhookTimestampOutOfRange", "WebhookSignatureMismatch", "WebhookBodyTooLarge",
    "BodyUnreadable", "InvalidEvent", "NotReadableYet", "EnqueueError",
])
def test_every_webhook_error_is_a_nomos_error_and_a_refused_delivery_a_suspicious_one(name):
    error = getattr(exceptions, name)
    assert issubclass(error, exceptions.NomosError)
    refused_before_storing = issubclass(error, exceptions.WebhookError)
    assert issubclass(error, SuspiciousOperation) == refused_before_storing
    assert (error.outcome in ("rejected", "too large", "unreadable")) if refused_before_storing \
        else not hasattr(error, "outcome")
