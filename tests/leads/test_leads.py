"""The lead path: a signed-in user without a customer fills in postcode and usage, we create a
Nomos lead pre-filled with their name, e-mail and our user id, remember it, and send them to the
checkout; the later ``subscription.created`` for that lead links the new customer to them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from nomos_billing.exceptions import NomosAPIError
from nomos_billing.forms import LeadForm
from nomos_billing.linking import resolve_reference, user_reference
from nomos_billing.models import NomosCustomer, NomosLead
from nomos_billing.sandbox import Fault, seed
from nomos_billing.testing import post_event

pytestmark = pytest.mark.django_db

START = "/nomos/portal/start/"
PLAN = "pln_sandbox_home"


@pytest.fixture
def with_plan(settings: Any) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "PLAN_ID": PLAN}


@pytest.fixture
def bob(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(
        "bob", "bob@example.com", "pw", first_name="Bob", last_name="Builder"
    )


@pytest.fixture
def as_bob(client: Client, bob: Any) -> Client:
    client.force_login(bob)
    return client


def lead_requests(nomos: Any) -> list[dict[str, Any]]:
    return [json.loads(e["body"]) for e in nomos.request_log if e["key"] == "POST /leads"]


def test_form_is_shown_to_a_user_without_customer(
    as_bob: Client, nomos: Any, with_plan: None
) -> None:
    response = as_bob.get(START)
    assert response.status_code == 200
    assert b'name="zip_code"' in response.content
    assert b'name="estimated_usage"' in response.content
    assert "no-store" in response["Cache-Control"]
    assert nomos.calls == {}


def test_lead_is_created_with_the_users_data_and_redirects_303_to_checkout(
    as_bob: Client, bob: Any, nomos: Any, with_plan: None
) -> None:
    response = as_bob.post(START, {"zip_code": "10115", "estimated_usage": "3200"})

    assert response.status_code == 303
    assert lead_requests(nomos) == [
        {
            "plan": PLAN,
            "address": {"zip": "10115"},
            "meter": {"estimated_usage": 3200},
            "customer": {
                "type": "person",
                "email": "bob@example.com",
                "first_name": "Bob",
                "last_name": "Builder",
            },
            # Our own attribution, signed: never the bare id.
            "metadata": {"django_user_id": user_reference(bob)},
        }
    ]
    assert resolve_reference(lead_requests(nomos)[0]["metadata"]["django_user_id"]) == bob
    lead = NomosLead.objects.get()
    assert (lead.user, lead.plan) == (bob, PLAN)
    assert response["Location"] == nomos.leads[lead.lead_id]["link"]
    assert response["Location"] == f"{nomos.checkout_origin(PLAN)}/?id={lead.lead_id}"


def test_a_stored_lead_is_logged_with_its_id_and_user(
    as_bob: Client, bob: Any, nomos: Any, with_plan: None, caplog: Any
) -> None:
    # The line an operator searches for when a subscription did not link by its lead.
    caplog.set_level("INFO", logger="nomos_billing.leads")
    assert as_bob.post(START, {"zip_code": "10115", "estimated_usage": "3200"}).status_code == 303
    lead = NomosLead.objects.get()
    assert f"lead {lead.lead_id} created for user {bob.pk}" in caplog.messages


def test_empty_names_are_left_out_of_the_lead(
    client: Client, django_user_model: Any, nomos: Any, with_plan: None
) -> None:
    user = django_user_model.objects.create_user("nameless", "", "pw")
    client.force_login(user)
    response = client.post(START, {"zip_code": "80331", "estimated_usage": "100"})
    assert response.status_code == 303
    assert lead_requests(nomos)[0]["customer"] == {"type": "person"}


@pytest.mark.parametrize(
    "with_lead_resolver_only", [False, True], ids=["default-resolvers", "lead-resolver-only"]
)
def test_subscription_created_for_the_lead_links_the_customer_to_the_user(
    as_bob: Client,
    bob: Any,
    nomos: Any,
    with_plan: None,
    settings: Any,
    with_lead_resolver_only: bool,
) -> None:
    as_bob.post(START, {"zip_code": "10115", "estimated_usage": "2500"})
    lead_id = NomosLead.objects.get().lead_id
    subscription = nomos.convert_lead(lead_id)
    if with_lead_resolver_only:
        settings.NOMOS_BILLING = {
            **settings.NOMOS_BILLING,
            "USER_RESOLVERS": ["nomos_billing.linking.by_lead"],
        }
    event = nomos.build_event("subscription.created", {"subscription": subscription["id"]})
    assert event["context"]["lead"] == lead_id

    response = post_event(Client(enforce_csrf_checks=True), event)

    assert response.status_code == 200, response.content
    customer = NomosCustomer.objects.get(customer_id=subscription["customer"]["id"])
    # Lead first, and the sandbox copies nothing from the lead: the lead links, not metadata.
    assert (customer.user, customer.linked_by) == (bob, "by_lead")
    # Bob's button now opens his portal.
    link = as_bob.get("/nomos/portal/")["Location"]
    assert link.startswith(nomos.portal_origin + "/auth/confirm?")


@pytest.mark.parametrize(
    "data",
    [
        {"zip_code": "1011", "estimated_usage": "2500"},
        {"zip_code": "101155", "estimated_usage": "2500"},
        {"zip_code": "1011a", "estimated_usage": "2500"},
        {"zip_code": "\u0661\u0660\u0661\u0661\u0665", "estimated_usage": "2500"},
        {"zip_code": "１０１１５", "estimated_usage": "2500"},
        {"zip_code": "10115\n", "estimated_usage": "2500x"},
        {"zip_code": "", "estimated_usage": "2500"},
        {"zip_code": "10115", "estimated_usage": "0"},
        {"zip_code": "10115", "estimated_usage": "-5"},
        {"zip_code": "10115", "estimated_usage": "99"},
        {"zip_code": "10115", "estimated_usage": "1000001"},
        {"zip_code": "10115", "estimated_usage": "2500.5"},
        {"zip_code": "10115", "estimated_usage": "lots"},
        {"zip_code": "10115"},
    ],
)
def test_invalid_form_is_shown_again_and_nomos_is_not_called(
    as_bob: Client, nomos: Any, with_plan: None, data: dict[str, str]
) -> None:
    response = as_bob.post(START, data)
    assert response.status_code == 200
    assert b"errorlist" in response.content
    assert nomos.calls == {}
    assert not NomosLead.objects.exists()


@pytest.mark.parametrize("zip_code", ["1011", "101155", "1011a", "", "１０１１５"])
def test_a_bad_postcode_shows_one_error(
    as_bob: Client, nomos: Any, with_plan: None, zip_code: str
) -> None:
    response = as_bob.post(START, {"zip_code": zip_code, "estimated_usage": "2500"})
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert list(errors) == ["zip_code"]
    assert len(errors["zip_code"]) == 1, errors["zip_code"]
    assert response.content.count(b'<ul class="errorlist') == 1
    assert nomos.calls == {}


@pytest.mark.parametrize(("zip_code", "usage"), [("10115", "100"), (" 01067 ", "1000000")])
def test_valid_form_values(zip_code: str, usage: str) -> None:
    form = LeadForm({"zip_code": zip_code, "estimated_usage": usage})
    assert form.is_valid(), form.errors
    assert form.cleaned_data == {"zip_code": zip_code.strip(), "estimated_usage": int(usage)}


def test_start_without_plan_is_404(as_bob: Client, nomos: Any) -> None:
    assert as_bob.get(START).status_code == 404


def test_start_for_anonymous_redirects_to_login(
    client: Client, nomos: Any, with_plan: None
) -> None:
    response = client.post(START, {"zip_code": "10115", "estimated_usage": "2500"})
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")
    assert nomos.calls == {}


def test_start_for_a_linked_user_redirects_to_the_portal(
    as_bob: Client, bob: Any, nomos: Any, with_plan: None
) -> None:
    NomosCustomer.objects.create(user=bob, customer_id=seed.CAROL)
    response = as_bob.get(START)
    assert response.status_code == 302
    assert response["Location"] == "/nomos/portal/"
    assert nomos.calls == {}


def test_start_post_without_csrf_token_is_refused(bob: Any, nomos: Any, with_plan: None) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(bob)
    response = client.post(START, {"zip_code": "10115", "estimated_usage": "2500"})
    assert response.status_code == 403
    assert b"CSRF verification failed" in response.content  # Django's own page
    assert "no-store" in response["Cache-Control"]  # like every answer of the form
    assert nomos.calls == {}


@pytest.mark.parametrize(
    "fault",
    [Fault(status=500), Fault(status=429, retry_after=60), Fault(status=400), Fault(status=403)],
    ids=["500", "429", "400", "403"],
)
def test_nomos_failure_shows_503_and_stores_no_lead(
    as_bob: Client, nomos: Any, with_plan: None, fault: Fault
) -> None:
    nomos.add_fault("POST /leads", fault, times=None)
    response = as_bob.post(START, {"zip_code": "10115", "estimated_usage": "2500"})
    assert response.status_code == 503
    # 403: the credentials' scope, which waiting does not fix (no Retry-After).
    expected = {429: "60", 403: None}.get(fault.status, "30")
    assert response.get("Retry-After") == expected
    assert not NomosLead.objects.exists()
    # A POST is never retried where Nomos may have acted, nor through a long Retry-After.
    assert nomos.count("POST /leads") == 1
    for token in nomos.issued_tokens():
        assert token not in response.content.decode()


TRY_AGAIN = {
    "en": "We could not prepare your switch just now. Your details are kept below: please send "
          "the form again in a moment.",
    "de": "Wir konnten Ihren Wechsel gerade nicht vorbereiten. Ihre Angaben stehen weiterhin "
          "unten: Bitte senden Sie das Formular gleich noch einmal ab.",
}


@pytest.mark.parametrize("language", ["en", "de"])
@pytest.mark.parametrize(
    "fault",
    [Fault(status=503, act_first=True), Fault(status=500, act_first=True),
     Fault(status=503), Fault(hang=1.5, act_first=True), Fault(drop_connection=True)],
    ids=["503-after-acting", "500-after-acting", "503", "timeout-after-acting", "dropped"],
)
def test_a_lead_nomos_may_have_made_is_sent_once_and_the_form_says_try_again(
    as_bob: Client, nomos: Any, with_plan: None, settings: Any, fault: Fault, language: str
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "TIMEOUT": (2, 0.3)}
    nomos.add_fault("POST /leads", fault, times=1)
    response = as_bob.post(START, {"zip_code": "10115", "estimated_usage": "3200"},
                           headers={"Accept-Language": language})

    # Exactly one POST /leads, so at most one lead at Nomos, and none of ours.
    assert nomos.count("POST /leads") == 1
    assert len(nomos.leads) == (1 if fault.act_first else 0)
    assert not NomosLead.objects.exists()
    # The form again, with what the user typed and a clear "try again".
    assert response.status_code == 503
    assert response["Retry-After"] == "30"
    assert "no-store" in response["Cache-Control"]
    html = response.content.decode()
    assert TRY_AGAIN[language] in html
    assert 'name="zip_code" value="10115"' in html
    assert 'name="estimated_usage" value="3200"' in html
    assert response.context["form"].non_field_errors() == [TRY_AGAIN[language]]
    # Sent again by the user, it works: one more lead, ours this time.
    response = as_bob.post(START, {"zip_code": "10115", "estimated_usage": "3200"})
    assert response.status_code == 303
    assert nomos.count("POST /leads") == 2
    assert NomosLead.objects.get().lead_id in nomos.leads


class FakeClient:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def create_lead(self, payload: dict[str, Any]) -> Any:
        return self.answer


@pytest.mark.parametrize(
    "answer",
    [
        {"id": "lead_x", "link": "javascript:alert(1)"},
        {"id": "lead_x", "link": "http://evil.example.com/checkout/lead_x"},
        {"id": "lead_x", "link": "//evil.example.com/checkout"},
        {"id": "lead_x", "link": "https://user@evil.example.com/"},
        {"id": "lead_x"},
        {"link": "https://checkout.example.com/lead_x"},
        ["not", "an", "object"],
    ],
)
def test_unusable_lead_answer_is_not_followed(
    as_bob: Client, with_plan: None, monkeypatch: pytest.MonkeyPatch, answer: Any
) -> None:
    monkeypatch.setattr("nomos_billing.views.get_client", lambda: FakeClient(answer))
    response = as_bob.post(START, {"zip_code": "10115", "estimated_usage": "2500"})
    assert response.status_code == 503
    assert "Location" not in response
    assert not NomosLead.objects.exists()


def test_https_checkout_link_is_followed(
    as_bob: Client, with_plan: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "API_BASE_URL": "https://api.nomos.energy",
                              "PORTAL_HOSTS": None, "CHECKOUT_HOSTS": None}
    answer = {"id": "lead_y", "link": "https://brand.customerportal.energy/start?lead=lead_y"}
    monkeypatch.setattr("nomos_billing.views.get_client", lambda: FakeClient(answer))
    response = as_bob.post(START, {"zip_code": "10115", "estimated_usage": "2500"})
    assert response.status_code == 303
    assert response["Location"] == answer["link"]
    assert NomosLead.objects.get().lead_id == "lead_y"


def test_a_lead_id_longer_than_nomos_sends_is_not_followed(
    as_bob: Client, with_plan: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "API_BASE_URL": "https://api.nomos.energy"}
    lead_id = "lead_" + "y" * 60  # 65 characters
    answer = {"id": lead_id, "link": f"https://brand.customerportal.energy/start?lead={lead_id}"}
    monkeypatch.setattr("nomos_billing.views.get_client", lambda: FakeClient(answer))
    response = as_bob.post(START, {"zip_code": "10115", "estimated_usage": "2500"})
    assert response.status_code == 503
    assert "Location" not in response
    assert not NomosLead.objects.exists()


# -- business errors: something the user can fix, not an outage ---------------------------------


def test_unserviceable_zip_is_shown_on_the_zip_field_with_what_was_typed(
    as_bob: Client, nomos: Any, with_plan: None
) -> None:
    response = as_bob.post(START, {"zip_code": "00000", "estimated_usage": "3100"})

    assert response.status_code == 200
    assert "Retry-After" not in response
    html = response.content.decode()
    errors = response.context["form"].errors
    assert errors == {"zip_code": ["We cannot supply electricity to this postcode yet."]}
    assert 'id="id_zip_code_error"' in html
    assert 'value="00000"' in html and 'value="3100"' in html
    assert [r["address"]["zip"] for r in lead_requests(nomos)] == ["00000"]
    assert not NomosLead.objects.exists()


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        ([{"code": "too_small", "field": "meter.estimated_usage", "message": "min 100"}],
         {"estimated_usage": ["This value is too small."]}),
        ([{"code": "invalid_format", "field": "address.zip", "message": "?"},
          {"code": "invalid_value", "field": "address.zip", "message": "?"}],
         {"zip_code": ["Please check this value."]}),
        ([{"code": "duplicate_customer_email", "field": "customer.email", "message": "taken"}],
         {"__all__": ["Your details could not be accepted. Please check them and try again."]}),
    ],
)
def test_other_business_errors_land_on_their_field_or_the_form(
    as_bob: Client, with_plan: None, monkeypatch: pytest.MonkeyPatch, errors: Any,
    expected: Any
) -> None:
    class Refusing:
        def create_lead(self, payload: dict[str, Any]) -> Any:
            raise NomosAPIError(400, "BAD_REQUEST", "no", "req_1", method="POST",
                                path="/leads", errors=errors)

    monkeypatch.setattr("nomos_billing.views.get_client", lambda: Refusing())
    response = as_bob.post(START, {"zip_code": "10115", "estimated_usage": "2500"})
    assert response.status_code == 200
    assert response.context["form"].errors == expected


def test_the_try_again_form_can_be_sent_again(as_bob: Client, nomos: Any, with_plan: None) -> None:
    # The form comes back with the user's details; without its CSRF token sending it again
    # would be refused.
    nomos.add_fault("POST /leads", Fault(status=500), times=None)
    response = as_bob.post(START, {"zip_code": "10115", "estimated_usage": "2500"})
    assert response.status_code == 503
    assert 'name="csrfmiddlewaretoken"' in response.content.decode()
