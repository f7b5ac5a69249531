"""Guard: CSRF on every state-changing endpoint, for every body a browser can send; and the
webhook, exempt from CSRF by design, guarded by its signature for every body instead.

Each endpoint is posted through ``Client(enforce_csrf_checks=True)`` with a form-encoded,
multipart, JSON and ``text/plain`` body (the last three need no preflight from a form or a
``fetch`` without custom headers; JSON is what the apps send): without a token (403, and
nothing happened: no Nomos call, no lead, no link, no mail) and with one (in the form field
where a form can carry it, in ``X-CSRFToken`` for every type; the endpoint does its work).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.core import mail
from django.test import Client

from nomos_billing.confirmation import confirmation_url
from nomos_billing.models import NomosCustomer, NomosLead, NomosLinkClaim, WebhookEvent
from nomos_billing.sandbox import seed
from nomos_billing.testing import encode_event, make_event, signature_headers

pytestmark = pytest.mark.django_db

#: A CSRF secret as the cookie holds it; the same value is a valid token (Django accepts the
#: unmasked secret as well as a masked one).
SECRET = "s" * 32
BOUNDARY = "BoUnDaRy"
FORM = "application/x-www-form-urlencoded"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
JSON = "application/json"
TEXT = "text/plain"
KINDS = {"form": FORM, "multipart": MULTIPART, "json": JSON, "text": TEXT}
LEAD_FORM = {"zip_code": "10115", "estimated_usage": "2500"}


def body(kind: str, fields: dict[str, str]) -> str:
    if kind == "form":
        from urllib.parse import urlencode

        return urlencode(fields)
    if kind == "multipart":
        parts = [
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            for name, value in fields.items()
        ]
        return "".join(parts) + f"--{BOUNDARY}--\r\n"
    if kind == "json":
        return json.dumps(fields)
    return "\n".join(f"{name}={value}" for name, value in fields.items()) or "x"


@pytest.fixture
def world(nomos: Any, django_user_model: Any, settings: Any) -> dict[str, Any]:
    """A linked user (the portal mints), a user without customer (the lead form) and a
    pending held link of a third (confirm, send again)."""
    settings.NOMOS_BILLING = {
        **settings.NOMOS_BILLING,
        "PLAN_ID": "pln_sandbox_home",
        "SITE_URL": "https://shop.example",
    }
    linked = django_user_model.objects.create_user("linked", "alice@example.com", "pw")
    NomosCustomer.objects.create(customer_id=seed.ALICE, email="alice@example.com", user=linked)
    newcomer = django_user_model.objects.create_user("new", "new@example.com", "pw")
    holder = django_user_model.objects.create_user("holder", "holder@example.com", "pw")
    held = NomosCustomer.objects.create(customer_id="cus_held", email="victim@example.org")
    claim = NomosLinkClaim.objects.create(customer=held, user=holder, rule="by_lead",
                                          nonce="n0nce")
    return {"nomos": nomos, "linked": linked, "newcomer": newcomer, "holder": holder,
            "held": held, "claim": claim}


def portal_minted(w: dict[str, Any]) -> int:
    return int(w["nomos"].count("POST /admin/magic_link"))


def leads(w: dict[str, Any]) -> int:
    return NomosLead.objects.count()


def held_linked(w: dict[str, Any]) -> bool:
    return NomosCustomer.objects.get(pk=w["held"].pk).user_id == w["holder"].pk


def mails(w: dict[str, Any]) -> int:
    return len(mail.outbox)


#: Endpoint -> (who posts, URL of the world, what it changes, whether every body does it).
ENDPOINTS: dict[str, tuple[str, Callable[[dict[str, Any]], str], Callable[..., Any], bool]] = {
    "portal": ("linked", lambda w: "/nomos/portal/", portal_minted, True),
    "portal/link": ("linked", lambda w: "/nomos/portal/link/", portal_minted, True),
    # The lead form reads form fields: only form bodies make a lead.
    "portal/start": ("newcomer", lambda w: "/nomos/portal/start/", leads, False),
    "link/confirm": ("holder", lambda w: confirmation_url(w["claim"], ""), held_linked, True),
    "link/resend": ("holder", lambda w: "/nomos/link/resend/", mails, True),
}


def poster(w: dict[str, Any], who: str) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(w[who])
    client.cookies["csrftoken"] = SECRET
    return client


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_without_a_token_nothing_happens(endpoint, kind, world):
    who, url, effect, _ = ENDPOINTS[endpoint]
    before = effect(world)
    response = poster(world, who).post(url(world), body(kind, LEAD_FORM), content_type=KINDS[kind])
    assert response.status_code == 403, (endpoint, kind, response.status_code)
    assert "no-store" in response["Cache-Control"]
    if endpoint == "portal/link":
        assert response.json() == {
            "code": "csrf_failed",
            "error": "Your session has expired. Please reload the page and try again.",
        }
    assert effect(world) == before


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_wrong_token_is_refused_too(endpoint, kind, world):
    who, url, effect, _ = ENDPOINTS[endpoint]
    before = effect(world)
    fields = {**LEAD_FORM, "csrfmiddlewaretoken": "t" * 32}
    response = poster(world, who).post(url(world), body(kind, fields), content_type=KINDS[kind],
                                       headers={"X-CSRFToken": "t" * 32})
    assert response.status_code == 403
    assert effect(world) == before


@pytest.mark.parametrize(
    ("kind", "carrier"),
    [("form", "field"), ("multipart", "field"), *((k, "header") for k in KINDS)],
)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_with_the_token_the_endpoint_works(endpoint, kind, carrier, world):
    who, url, effect, any_body = ENDPOINTS[endpoint]
    before = effect(world)
    fields = {**LEAD_FORM, "csrfmiddlewaretoken": SECRET} if carrier == "field" else LEAD_FORM
    headers = {"X-CSRFToken": SECRET} if carrier == "header" else {}
    response = poster(world, who).post(url(world), body(kind, fields), content_type=KINDS[kind],
                                       headers=headers)
    assert response.status_code != 403, (endpoint, kind, carrier, response.content[:300])
    if any_body or kind in ("form", "multipart"):
        assert effect(world) != before, (endpoint, kind, carrier, response.status_code)


# -- the webhook: csrf-exempt, so the signature stands for every content type --------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("signature", ["none", "wrong secret", "valid"])
def test_the_webhook_is_signature_guarded_for_every_content_type(kind, signature, nomos):
    event = make_event("invoice.paid", {"invoice": "inv_1"})
    raw = encode_event(event)
    headers = {
        "none": {},
        "wrong secret": signature_headers(raw, "whsec_not_ours"),
        "valid": signature_headers(raw),
    }[signature]
    response = Client(enforce_csrf_checks=True).post(
        "/nomos/webhook/", raw, content_type=KINDS[kind], headers=headers
    )
    if signature == "valid":
        assert response.status_code == 200
        assert WebhookEvent.objects.filter(event_id=event["id"]).exists()
    else:
        assert response.status_code == 400
        assert not WebhookEvent.objects.exists()


@pytest.mark.parametrize("kind", ["form", "multipart", "text"])
def test_a_signed_body_reencoded_as_a_form_is_refused(kind, nomos):
    """A browser form cannot forge a delivery: the signature covers the raw bytes, and a form
    posting the envelope's fields makes other bytes."""
    event = make_event("invoice.paid", {"invoice": "inv_1"})
    headers = signature_headers(encode_event(event))
    fields = {k: str(v) for k, v in event.items()}
    response = Client(enforce_csrf_checks=True).post(
        "/nomos/webhook/", body(kind, fields), content_type=KINDS[kind], headers=headers
    )
    assert response.status_code == 400
    assert not WebhookEvent.objects.exists()
