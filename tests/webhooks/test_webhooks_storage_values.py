"""What is stored for the values SQLite accepts and PostgreSQL refuses: NaN, the infinities,
NUL and lone surrogates. Asserted on the stored rows, not only on the status code, and run on
both databases (CI's PostgreSQL pass runs this module; under CI=true it may not skip there).

- From Nomos (its JSON may carry ``NaN``/``Infinity`` literals, ``1e400``, ``\\u0000``,
  ``\\ud800``): repaired (``jsonsafe.clean``) and stored, the rest of the row intact.
- In a signed webhook: refused with 400, nothing stored (test_webhooks_untrusted_input.py has the
  NUL, surrogate and 1e400 rows; here the literals ``json`` would take).
- Typed by a person (admin searches, the lead form): an answer, never a 500 from the database.
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from nomos_billing.models import NomosLead, NomosSubscription, WebhookEvent
from nomos_billing.testing import make_event, post_event, sign_payload

pytestmark = pytest.mark.django_db

URL = "/nomos/webhook/"
SECRET = "whsec_test_new"


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (float("nan"), None),
        (float("inf"), None),
        (float("-inf"), None),
        ("a\x00b", "ab"),
        ("\ud800x", "x"),
        ("x\udfff", "x"),
        ("\ud83d\ude00", "\U0001f600"),  # a pair is one character, kept
        (1.5, 1.5),
    ],
    ids=["NaN", "inf", "-inf", "NUL", "high surrogate", "low surrogate", "pair", "finite"],
)
def test_a_value_from_nomos_is_stored_repaired(value, stored, nomos):
    customer = nomos.add_customer("vals@example.com", "Val", "Ues")
    sub = nomos.add_subscription(customer["id"], status="active",
                                 metadata={"v": value, "list": [value], "kept": "yes"})
    event = make_event("subscription.created", {"subscription": sub["id"]})
    assert post_event(Client(), event).status_code == 200
    row = NomosSubscription.objects.get(subscription_id=sub["id"])
    # Read back from the database, as stored (jsonb on PostgreSQL, text on SQLite).
    row.refresh_from_db()
    assert row.metadata == {"v": stored, "list": [stored], "kept": "yes"}
    assert WebhookEvent.objects.get(event_id=event["id"]).status == "processed"


def test_a_key_from_nomos_with_nul_is_stored_repaired(nomos):
    customer = nomos.add_customer("keys@example.com", "Ke\x00y", "S\udc00")
    sub = nomos.add_subscription(customer["id"], status="active", metadata={"k\x00": 1})
    event = make_event("subscription.created", {"subscription": sub["id"]})
    assert post_event(Client(), event).status_code == 200
    row = NomosSubscription.objects.select_related("customer").get(subscription_id=sub["id"])
    assert row.metadata == {"k": 1}
    assert (row.customer.first_name, row.customer.last_name) == ("Key", "S")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_a_signed_envelope_with_a_non_json_number_is_refused_and_nothing_stored(literal):
    body = b'{"id": "evt_lit", "topic": "invoice.paid", "x": ' + literal + b"}"
    response = Client().post(URL, body, content_type="application/json",
                             headers={"X-Nomos-Signature": sign_payload(body, SECRET)})
    assert response.status_code == 400
    assert b"not JSON" in response.content  # which it is not (RFC 8259 has no such numbers)
    assert not WebhookEvent.objects.exists()


def test_a_signed_envelope_stores_what_was_sent(nomos):
    """The other side: what is accepted is stored as sent. Numbers by value: PostgreSQL's
    jsonb keeps them as ``numeric``, so ``1e308`` reads back as the integer it equals."""
    numbers = {"big": 1e308, "tiny": 5e-324, "neg": -2.5}
    text = {"emoji": "\U0001f600", "tab": "a\tb", "bmp": "\uffff"}
    event = make_event("invoice.paid", {"invoice": "inv_1"})
    event["extra"] = {**numbers, **text}
    assert post_event(Client(), event).status_code == 200
    payload = WebhookEvent.objects.get(event_id=event["id"]).payload["extra"]
    assert {k: payload[k] for k in text} == text
    assert {k: float(payload[k]) for k in numbers} == numbers


#: As a browser sends them: percent-encoded bytes; a lone surrogate's UTF-8-like bytes
#: (``%ED%A0%80``) are not UTF-8, and Django decodes them to U+FFFD.
TYPED = ["cus_%00", "evt_%00x", "sub_%ED%A0%80", "%00", "lead_%ED%BF%BF"]


@pytest.mark.parametrize("term", TYPED, ids=["NUL customer", "NUL event", "surrogate sub",
                                              "NUL alone", "surrogate lead"])
@pytest.mark.parametrize("model", ["nomoscustomer", "nomossubscription", "nomoslead",
                                   "webhookevent", "nomoslinkclaim"])
def test_an_admin_search_for_what_the_database_refuses_answers(model, term, admin_client):
    url = reverse(f"admin:nomos_billing_{model}_changelist")
    response = admin_client.get(f"{url}?q={term}")
    assert response.status_code == 200


@pytest.mark.parametrize("zip_code", ["10%0015", "1011%ED%A0%80"], ids=["NUL", "surrogate"])
def test_the_lead_form_with_what_the_database_refuses(zip_code, nomos, django_user_model,
                                                      settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "PLAN_ID": "pln_sandbox_home"}
    user = django_user_model.objects.create_user("u", "u@example.com", "pw")
    client = Client()
    client.force_login(user)
    response = client.post("/nomos/portal/start/", f"zip_code={zip_code}&estimated_usage=2500",
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200
    assert not NomosLead.objects.exists()
    assert nomos.count("POST /leads") == 0


@pytest.mark.parametrize(
    ("body", "decoded"),
    [
        (b'{"a": 1e400, "b": [-1e999, 2.5]}', {"a": None, "b": [None, 2.5]}),
        (b'{"a": "x\\u0000y", "b": "\\uDBFFz", "c": "\\ud83d\\ude00"}',
         {"a": "xy", "b": "z", "c": "\U0001f600"}),
        (b'{"a": "x\\\\u0000y"}', {"a": "x\\u0000y"}),  # an escaped backslash: text, kept
        ('{"a": "\\u0000\u00e9"}'.encode("utf-16"), {"a": "\u00e9"}),
        (b'{"a": "ok \\u00e9", "b": 1.5, "c": [true, null, 10]}',
         {"a": "ok \u00e9", "b": 1.5, "c": [True, None, 10]}),
    ],
    ids=["huge numbers", "escapes", "escaped backslash", "utf-16", "nothing to repair"],
)
def test_json_from_nomos_is_repaired_as_it_is_decoded(body, decoded):
    from nomos_billing.jsonsafe import loads_clean

    assert loads_clean(body) == decoded


def test_json_from_nomos_that_needs_nothing_is_not_copied(monkeypatch):
    from nomos_billing import jsonsafe

    walked: list[object] = []
    monkeypatch.setattr(jsonsafe, "clean", lambda data: walked.append(data) or data)
    assert jsonsafe.loads_clean(b'{"a": ["b", 1.5, {"c": "d"}]}') == {"a": ["b", 1.5, {"c": "d"}]}
    assert walked == []
    jsonsafe.loads_clean(b'{"a": "\\u0000"}')
    assert walked == [{"a": "\x00"}]


@pytest.mark.parametrize(("data", "words"), [
    ({"a": ["x\x00"]}, "a NUL character (\\u0000)"),
    ({"a": "\ud800"}, "a lone surrogate (an unpaired \\ud800-\\udfff escape)"),
    ({"a\x00": 1}, "a NUL character (\\u0000) in a key"),
    ({"a": [1, float("inf")]}, "a number too large to store"),
    ({1: "b", "c": [None, True, 2]}, None),
])
def test_what_cannot_be_stored_is_named_in_words_for_the_answer(data, words):
    from nomos_billing import jsonsafe

    assert jsonsafe.problem(data) == words


def test_clean_keeps_keys_that_are_not_strings():
    # Built in Python rather than decoded (JSON keys are strings): a number key stays as it is.
    from nomos_billing import jsonsafe

    assert jsonsafe.clean({1: "a\x00", "b\x00": [float("inf")]}) == {1: "a", "b": [None]}
