"""``WEBHOOK_SECRETS`` as the webhook endpoint uses it: stripped, split at commas, and never a
blank secret (nor, against a real Nomos, a short one) that anyone could sign with."""

from __future__ import annotations

import os

import pytest
from django.test import Client

from nomos_billing.conf import nomos_settings
from nomos_billing.models import WebhookEvent
from nomos_billing.signatures import HEADER, sign_payload
from nomos_billing.testing import encode_event, make_event

pytestmark = pytest.mark.django_db

URL = "/nomos/webhook/"
NEW = "whsec_0123456789abcdef"
OLD = "whsec_fedcba9876543210"


def configure(settings, secrets, api: str = "https://api.nomos.energy") -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "WEBHOOK_SECRETS": secrets,
                              "API_BASE_URL": api}


def deliver(secret: str) -> int:
    # test.event is acknowledged without a call to Nomos: nothing leaves the machine.
    body = encode_event(make_event("test.event"))
    return Client().post(URL, data=body, content_type="application/json",
                         headers={HEADER: sign_payload(body, secret)}).status_code


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"{NEW}, {OLD}", [NEW, OLD]),
        (f" {NEW} , ", [NEW]),
        ([NEW, f" {OLD}"], [NEW, OLD]),
        ([f"{NEW},{OLD}"], [NEW, OLD]),
        ([NEW, " ", ""], [NEW]),
        ([NEW, "whsec_short"], [NEW]),
        ([NEW, 42], []),
        (None, []),
    ],
)
def test_secrets_are_stripped_split_and_blank_or_short_ones_dropped(settings, value, expected):
    configure(settings, value)
    assert nomos_settings.WEBHOOK_SECRETS == expected


def test_the_readme_environment_example_gives_a_clean_list(settings, monkeypatch):
    monkeypatch.setenv("NOMOS_WEBHOOK_SECRETS", f"{NEW}, {OLD},")
    configure(settings, os.environ.get("NOMOS_WEBHOOK_SECRETS", "whsec_sandbox").split(","))
    assert nomos_settings.WEBHOOK_SECRETS == [NEW, OLD]


def test_a_short_secret_is_used_against_a_loopback_sandbox(settings):
    configure(settings, "whsec_sandbox", api="http://127.0.0.1:8765")
    assert nomos_settings.WEBHOOK_SECRETS == ["whsec_sandbox"]
    assert deliver("whsec_sandbox") == 200


@pytest.mark.parametrize("forged_with", [" ", "", "whsec_short"])
def test_a_delivery_signed_with_a_blank_or_short_configured_secret_is_400(settings, forged_with):
    configure(settings, f"{NEW}, {forged_with}" if forged_with != "whsec_short"
              else [NEW, "whsec_short"])

    assert deliver(forged_with) == 400
    assert not WebhookEvent.objects.exists()
    assert deliver(NEW) == 200  # the real secret still verifies
    assert WebhookEvent.objects.count() == 1


def test_the_old_secret_still_verifies_after_a_space_in_the_rotation(settings):
    configure(settings, f"{NEW}, {OLD}")
    assert deliver(OLD) == 200
    assert WebhookEvent.objects.get().secret_index == 1
