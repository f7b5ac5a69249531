"""``nomos_billing.testing``: the helpers a site uses to post signed events in its tests."""

from __future__ import annotations

import json
import re

import pytest

from nomos_billing import testing
from nomos_billing.models import WebhookEvent
from nomos_billing.signatures import HEADER, sign_payload, verify_signature

pytestmark = pytest.mark.django_db
SECRETS = ["whsec_test_new", "whsec_test_old"]


def test_sign_payload_is_the_signatures_function():
    assert testing.sign_payload is sign_payload


def test_make_event_builds_a_nomos_envelope():
    event = testing.make_event("invoice.paid", {"invoice": "inv_1"})
    assert set(event) == {"id", "timestamp", "topic", "context"}
    assert re.fullmatch(r"evt_[a-z0-9]{24}", event["id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["timestamp"])
    assert (event["topic"], event["context"]) == ("invoice.paid", {"invoice": "inv_1"})
    assert testing.make_event("test.event")["context"] == {}
    assert testing.make_event("test.event", event_id="evt_fixed")["id"] == "evt_fixed"
    assert testing.make_event("a")["id"] != testing.make_event("a")["id"]


def test_encode_event_is_compact_utf8_json():
    body = testing.encode_event({"id": "evt_1", "name": "Müller"})
    assert body == '{"id":"evt_1","name":"Müller"}'.encode()
    assert json.loads(body) == {"id": "evt_1", "name": "Müller"}


def test_signature_headers_verify_with_the_first_configured_secret():
    headers = testing.signature_headers(b"{}", timestamp=1_700_000_000)
    assert list(headers) == [HEADER]
    assert verify_signature(b"{}", headers[HEADER], SECRETS, now=1_700_000_000) == 0


def test_signature_headers_without_configured_secret_say_what_to_set(settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "WEBHOOK_SECRETS": []}
    with pytest.raises(ValueError, match=r"NOMOS_BILLING\['WEBHOOK_SECRETS'\]"):
        testing.signature_headers(b"{}")


@pytest.mark.parametrize(("secret", "index"), [(None, 0), ("whsec_test_old", 1)])
def test_post_event_is_accepted_by_the_webhook(secret, index, client):
    event = testing.make_event("invoice.paid")
    response = testing.post_event(client, event, secret=secret)
    assert response.status_code == 200
    stored = WebhookEvent.objects.get()
    assert (stored.event_id, stored.payload, stored.secret_index) == (event["id"], event, index)


def test_post_event_sends_raw_bytes_unchanged(client):
    body = b'{ "id" : "evt_spaced", "topic" : "invoice.paid" }'
    assert testing.post_event(client, body).status_code == 200
    assert WebhookEvent.objects.get().event_id == "evt_spaced"


def test_post_event_with_wrong_secret_or_old_timestamp_is_rejected(client):
    event = testing.make_event("invoice.paid")
    assert testing.post_event(client, event, secret="whsec_other").status_code == 400
    assert testing.post_event(client, event, timestamp=1).status_code == 400
    assert not WebhookEvent.objects.exists()


def test_post_event_to_another_url_and_with_extra_headers(client):
    response = testing.post_event(client, testing.make_event("invoice.paid"),
                                  url="/nomos/webhook/?x=1", headers={"User-Agent": "t"})
    assert response.status_code == 200
