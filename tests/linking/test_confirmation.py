"""A link must follow from the contract owner's own act (issue 18).

A lead or a signed reference proves who handed out a checkout link, not who signed the
contract. Each attack is played through the sandbox as it would happen: the attacker asks for a
checkout link, the victim finishes the checkout with their own address, and Nomos' webhook (or
the attacker's first click) arrives. The victim's contract must never reach the attacker's
account; the honest path (same address) must stay instant; the customer's mailbox confirms a
held link, signed in as the account it names.
"""

from __future__ import annotations

import re
from datetime import timedelta
from io import StringIO
from typing import Any
from unittest import mock

import pytest
from django.core import mail, signing
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from nomos_billing import confirmation
from nomos_billing.linking import user_reference
from nomos_billing.models import NomosCustomer, NomosLead, NomosLinkClaim
from nomos_billing.signals import customer_link_held, customer_linked
from nomos_billing.testing import post_event

pytestmark = pytest.mark.django_db

PLAN = "pln_sandbox_home"
VICTIM = {"email": "victim@example.org", "first_name": "Vera", "last_name": "Victim"}
#: How pages show the victim's address: enough to recognise, too little to learn.
MASKED_VICTIM = "v\u2022\u2022\u2022\u2022\u2022@e\u2022\u2022\u2022\u2022\u2022\u2022.org"


@pytest.fixture
def mallory(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("mallory", "mallory@example.com", "pw")


@pytest.fixture
def victim_user(django_user_model: Any) -> Any:
    # The victim may have an account of her own on the site; it plays no part in the attack.
    return django_user_model.objects.create_user("vera", "vera-site@example.net", "pw")


@pytest.fixture
def plan(settings: Any, nomos: Any) -> str:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "PLAN_ID": PLAN}
    return PLAN


@pytest.fixture
def held_signals(connect_receiver: Any) -> Any:
    calls: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        calls.append(kwargs)

    connect_receiver(customer_link_held, receiver)
    return calls


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def lead_of(user: Any) -> str:
    """``user`` sends the site's sign-up form: a real POST /leads, their address pre-filled."""
    response = signed_in(user).post(
        "/nomos/portal/start/", {"zip_code": "10115", "estimated_usage": "2500"}
    )
    assert response.status_code == 303, response.content
    return NomosLead.objects.filter(user=user).latest("created_at").lead_id


def finish_checkout(nomos: Any, person: dict[str, str], **kwargs: Any) -> dict[str, Any]:
    """Someone completes the hosted checkout with ``person``'s details."""
    return nomos.complete_checkout(
        PLAN, person=person, zip_code="10115", usage=2500, metadata={}, **kwargs
    )


def deliver(nomos: Any, subscription: dict[str, Any], capture: Any) -> None:
    event = nomos.build_event("subscription.created", {"subscription": subscription["id"]})
    with capture(execute=True):
        assert post_event(Client(), event).status_code == 200


def customer_of(subscription: dict[str, Any]) -> NomosCustomer:
    return NomosCustomer.objects.get(customer_id=subscription["customer"])


def link_in(message: Any) -> str:
    match = re.search(r"http://testserver(/nomos/link/confirm/\?t=\S+)", message.body)
    assert match, message.body
    return match.group(1)


# -- phishing ------------------------------------------------------------------------------


def test_phishing_by_lead_holds_the_victims_customer_and_mails_the_victim(
    nomos, plan, mallory, held_signals, django_capture_on_commit_callbacks
):
    lead_id = lead_of(mallory)
    subscription = finish_checkout(nomos, VICTIM, lead_id=lead_id)

    deliver(nomos, subscription, django_capture_on_commit_callbacks)

    customer = customer_of(subscription)
    assert customer.user is None and customer.email == VICTIM["email"]
    claim = NomosLinkClaim.objects.get()
    assert (claim.customer, claim.user, claim.rule, claim.status) == (
        customer, mallory, "by_lead", "pending"
    )
    assert [m.to for m in mail.outbox] == [[VICTIM["email"]]]
    body = mail.outbox[0].body
    assert "m\u2022\u2022\u2022\u2022\u2022\u2022@e\u2022\u2022\u2022\u2022\u2022\u2022.com" in body
    assert "mallory@example.com" not in body and "mallory" not in body
    assert [(c["customer"], c["user"], c["rule"]) for c in held_signals] == [
        (customer, mallory, "by_lead")
    ]


def test_phishing_by_lead_the_senders_click_and_json_show_no_customer_and_mint_nothing(
    nomos, plan, mallory, django_capture_on_commit_callbacks
):
    lead_id = lead_of(mallory)
    finish_checkout(nomos, VICTIM, lead_id=lead_id)
    nomos.reset_counts()
    client = signed_in(mallory)

    # The first click asks Nomos about the lead before any webhook: the lead converted.
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/nomos/portal/")
    assert response.status_code == 200
    text = response.content.decode()
    assert "We have sent a confirmation to " + MASKED_VICTIM in text
    assert VICTIM["email"] not in text
    json_response = client.post("/nomos/portal/link/")
    assert json_response.status_code == 404
    assert json_response.json()["code"] == "not_linked"
    assert nomos.count("POST /admin/magic_link") == 0
    assert NomosCustomer.objects.get().user is None
    assert [m.to for m in mail.outbox] == [[VICTIM["email"]]]


def test_phishing_by_signed_reference_holds_the_victims_customer(
    nomos, mallory, held_signals, django_capture_on_commit_callbacks
):
    subscription = finish_checkout(nomos, VICTIM)
    nomos.subscriptions[subscription["id"]]["metadata"] = {
        "django_user_id": user_reference(mallory)
    }

    deliver(nomos, subscription, django_capture_on_commit_callbacks)

    customer = customer_of(subscription)
    assert customer.user is None
    assert NomosLinkClaim.objects.get().rule == "by_metadata"
    assert [m.to for m in mail.outbox] == [[VICTIM["email"]]]
    assert len(held_signals) == 1
    response = signed_in(mallory).post("/nomos/portal/")
    assert response.status_code == 200
    assert nomos.count("POST /admin/magic_link") == 0


def test_a_redelivery_and_a_resync_neither_mail_again_nor_raise_a_second_claim(
    nomos, plan, mallory, held_signals, django_capture_on_commit_callbacks
):
    subscription = finish_checkout(nomos, VICTIM, lead_id=lead_of(mallory))
    deliver(nomos, subscription, django_capture_on_commit_callbacks)
    deliver(nomos, subscription, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        call_command("nomos_sync", stdout=StringIO(), stderr=StringIO())

    assert NomosLinkClaim.objects.count() == 1
    assert len(mail.outbox) == 1 and len(held_signals) == 1
    assert customer_of(subscription).user is None


# -- the honest path -----------------------------------------------------------------------


@pytest.mark.parametrize("checkout_address", ["bob@example.com", "Bob@Example.COM"])
def test_honest_lead_links_at_once_by_the_webhook(
    nomos, plan, django_user_model, checkout_address, django_capture_on_commit_callbacks
):
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "pw")
    subscription = finish_checkout(
        nomos, {**VICTIM, "email": checkout_address}, lead_id=lead_of(bob)
    )
    deliver(nomos, subscription, django_capture_on_commit_callbacks)
    customer = customer_of(subscription)
    assert (customer.user, customer.linked_by) == (bob, "by_lead")
    assert not NomosLinkClaim.objects.exists() and mail.outbox == []


def test_honest_lead_links_at_once_by_the_first_click(nomos, plan, django_user_model):
    alice = django_user_model.objects.create_user("alice2", "Alice@Example.COM", "pw")
    finish_checkout(nomos, {**VICTIM, "email": "alice@example.com"}, lead_id=lead_of(alice))

    response = signed_in(alice).post("/nomos/portal/")

    assert response.status_code == 303
    assert nomos.count("POST /admin/magic_link") == 1
    assert NomosCustomer.objects.get().user == alice


def test_honest_signed_reference_links_at_once(
    nomos, django_user_model, django_capture_on_commit_callbacks
):
    carol = django_user_model.objects.create_user("carol", "carol@example.com", "pw")
    subscription = finish_checkout(nomos, {**VICTIM, "email": "CAROL@example.com"})
    nomos.subscriptions[subscription["id"]]["metadata"] = {
        "django_user_id": user_reference(carol)
    }
    deliver(nomos, subscription, django_capture_on_commit_callbacks)
    assert (customer_of(subscription).user, customer_of(subscription).linked_by) == (
        carol, "by_metadata"
    )


def test_binding_off_links_whoever_handed_out_the_link(
    nomos, plan, mallory, settings, django_capture_on_commit_callbacks
):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "BIND_LINKS_TO_EMAIL": False}
    subscription = finish_checkout(nomos, VICTIM, lead_id=lead_of(mallory))
    deliver(nomos, subscription, django_capture_on_commit_callbacks)
    assert customer_of(subscription).user == mallory
    assert mail.outbox == []


# -- someone else's lead -------------------------------------------------------------------


def test_someone_elses_lead_is_held_and_never_blocks_the_owners_own_customer(
    nomos, plan, mallory, django_user_model, django_capture_on_commit_callbacks
):
    owner = django_user_model.objects.create_user("owner", "owner@example.com", "pw")
    # Mallory finishes a checkout with the owner's lead id and her own details.
    stolen = finish_checkout(
        nomos, {"email": "mallory@example.com", "first_name": "M", "last_name": "X"},
        lead_id=lead_of(owner),
    )
    deliver(nomos, stolen, django_capture_on_commit_callbacks)
    assert customer_of(stolen).user is None
    assert NomosLinkClaim.objects.get().user == owner
    # The mail goes to Mallory's address, but only the owner's session could confirm it.
    assert [m.to for m in mail.outbox] == [["mallory@example.com"]]
    response = signed_in(mallory).get(link_in(mail.outbox[0]))
    assert response.status_code == 403
    assert signed_in(mallory).post(link_in(mail.outbox[0])).status_code == 403
    assert customer_of(stolen).user is None

    # The owner's own checkout links normally.
    own = finish_checkout(
        nomos, {"email": "owner@example.com", "first_name": "O", "last_name": "W"},
        lead_id=lead_of(owner),
    )
    deliver(nomos, own, django_capture_on_commit_callbacks)
    assert (customer_of(own).user, customer_of(own).linked_by) == (owner, "by_lead")
    assert customer_of(stolen).user is None


# -- the confirmation link -----------------------------------------------------------------


@pytest.fixture
def held(nomos, plan, mallory, django_capture_on_commit_callbacks) -> dict[str, Any]:
    """A held claim of the victim's customer for Mallory's account, and its mailed link."""
    subscription = finish_checkout(nomos, VICTIM, lead_id=lead_of(mallory))
    deliver(nomos, subscription, django_capture_on_commit_callbacks)
    return {"customer": customer_of(subscription), "url": link_in(mail.outbox[-1])}


def test_following_the_link_signed_in_as_the_claims_user_asks_then_links(
    held, mallory, connect_receiver
):
    received: list[dict[str, Any]] = []
    connect_receiver(customer_linked, lambda sender, **kw: received.append(kw))
    client = signed_in(mallory)
    asked = client.get(held["url"])
    # GET only asks (mail scanners open links): nothing is linked yet.
    assert asked.status_code == 200
    assert 'method="post"' in asked.content.decode()
    assert NomosCustomer.objects.get(pk=held["customer"].pk).user is None

    done = client.post(held["url"])
    assert done.status_code == 200
    customer = NomosCustomer.objects.get(pk=held["customer"].pk)
    assert (customer.user, customer.linked_by) == (mallory, "confirmed")
    claim = NomosLinkClaim.objects.get()
    assert (claim.status, claim.decided_by) == ("confirmed", "mailbox")
    assert [(r["customer"].pk, r["user"], r["resolver"]) for r in received] == [
        (customer.pk, mallory, "confirmed")
    ]


def test_the_link_signed_in_as_another_user_links_nobody(held, victim_user):
    client = signed_in(victim_user)
    for response in (client.get(held["url"]), client.post(held["url"])):
        assert response.status_code == 403
        assert "Nothing was connected" in response.content.decode()
    assert NomosCustomer.objects.get(pk=held["customer"].pk).user is None
    assert NomosLinkClaim.objects.get().status == "pending"


def test_the_link_signed_out_asks_to_sign_in_first(held):
    response = Client().get(held["url"])
    assert response.status_code == 302
    assert "/login" in response["Location"]


def test_the_link_a_second_time_links_nobody(held, mallory, django_user_model):
    client = signed_in(mallory)
    assert client.post(held["url"]).status_code == 200
    again = client.post(held["url"])
    assert again.status_code == 410
    assert "already been used" in again.content.decode()


def test_an_expired_link_links_nobody(held, mallory):
    later = timezone.now() + timedelta(days=7, minutes=1)
    with mock.patch("django.core.signing.time.time", return_value=later.timestamp()):
        response = signed_in(mallory).post(held["url"])
    assert response.status_code == 410
    assert "expired" in response.content.decode()
    assert NomosCustomer.objects.get(pk=held["customer"].pk).user is None


def test_the_link_of_an_older_mail_stops_working_when_a_new_one_is_sent(held, mallory):
    claim = NomosLinkClaim.objects.get()
    assert confirmation.send_confirmation(claim)
    response = signed_in(mallory).post(held["url"])
    assert response.status_code == 410
    assert signed_in(mallory).post(link_in(mail.outbox[-1])).status_code == 200


@pytest.mark.parametrize(
    "tamper",
    [
        lambda url: url[:-3] + ("A" if url[-3] != "A" else "B") + url[-2:],
        lambda url: url.replace("?t=", "?t=x"),
        lambda url: "/nomos/link/confirm/?t=" + signing.dumps([1, "n"], salt="other"),
        lambda url: "/nomos/link/confirm/?t=" + signing.dumps("nope", salt=confirmation.SALT),
        lambda url: "/nomos/link/confirm/?t="
        + signing.dumps([999999, "n"], salt=confirmation.SALT),
        lambda url: "/nomos/link/confirm/?t=%00%ff",
        lambda url: "/nomos/link/confirm/",
        lambda url: "/nomos/link/confirm/?t=" + "A" * 5000,
    ],
    ids=["signature", "prefix", "other-salt", "not-a-claim", "no-such-claim", "bytes", "none",
         "huge"],
)
def test_a_tampered_link_links_nobody_with_a_clear_page(held, mallory, tamper):
    response = signed_in(mallory).post(tamper(held["url"]))
    assert response.status_code == 400
    assert "not valid" in response.content.decode()
    assert NomosCustomer.objects.get(pk=held["customer"].pk).user is None


def test_an_inactive_user_cannot_confirm(held, mallory):
    client = signed_in(mallory)
    mallory.is_active = False
    mallory.save()
    response = client.post(held["url"])
    assert response.status_code == 302  # the session no longer authenticates
    assert NomosCustomer.objects.get(pk=held["customer"].pk).user is None


def test_confirming_when_the_user_already_holds_a_customer_links_nothing(
    held, mallory, nomos
):
    NomosCustomer.objects.create(customer_id="cus_other", user=mallory, email="m@example.com")
    response = signed_in(mallory).post(held["url"])
    assert response.status_code == 409
    assert NomosCustomer.objects.get(pk=held["customer"].pk).user is None
    assert NomosLinkClaim.objects.get().status == "pending"


# -- the button of a user with a held link -------------------------------------------------


def test_the_button_says_where_the_mail_went_and_sends_again_rate_limited(held, mallory):
    from django.template import Context, Template
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.user = mallory
    html = Template("{% load nomos_billing %}{% nomos_portal_button %}").render(
        Context({"request": request})
    )
    assert MASKED_VICTIM in html
    assert VICTIM["email"] not in html
    assert 'action="/nomos/link/resend/"' in html

    client = signed_in(mallory)
    too_soon = client.post("/nomos/link/resend/")
    assert too_soon.status_code == 429
    assert 0 < int(too_soon["Retry-After"]) <= 300
    assert len(mail.outbox) == 1

    later = timezone.now() + confirmation.RESEND_INTERVAL + timedelta(seconds=1)
    with mock.patch("nomos_billing.confirmation.timezone.now", return_value=later):
        again = client.post("/nomos/link/resend/")
    assert again.status_code == 200
    assert [m.to for m in mail.outbox] == [[VICTIM["email"]]] * 2


def test_sending_again_stops_after_the_last_allowed_mail(held, mallory):
    NomosLinkClaim.objects.update(sends=confirmation.MAX_SENDS, sent_at=None)
    response = signed_in(mallory).post("/nomos/link/resend/")
    assert response.status_code == 429
    assert len(mail.outbox) == 1


def test_send_again_without_a_held_link_is_404(nomos, django_user_model):
    user = django_user_model.objects.create_user("nobody", "n@example.com", "pw")
    assert signed_in(user).post("/nomos/link/resend/").status_code == 404


def test_send_again_needs_csrf_and_post(held, mallory):
    client = Client(enforce_csrf_checks=True)
    client.force_login(mallory)
    refused = client.post("/nomos/link/resend/")
    assert refused.status_code == 403
    assert "no-store" in refused["Cache-Control"]
    assert signed_in(mallory).get("/nomos/link/resend/").status_code == 405
    assert len(mail.outbox) == 1


def test_confirming_needs_csrf(held, mallory):
    client = Client(enforce_csrf_checks=True)
    client.force_login(mallory)
    for kind, data in (
        ("application/x-www-form-urlencoded", ""),
        ("multipart/form-data; boundary=BoUnDaRy", "--BoUnDaRy--\r\n"),
        ("application/json", "{}"),
        ("text/plain", "x"),
    ):
        refused = client.post(held["url"], data=data, content_type=kind)
        assert refused.status_code == 403
        assert "no-store" in refused["Cache-Control"]
    assert NomosCustomer.objects.get(pk=held["customer"].pk).user is None


def test_a_failing_mail_server_keeps_the_claim_and_says_why(
    nomos, plan, mallory, django_capture_on_commit_callbacks, no_secrets_in_logs
):
    with mock.patch(
        "django.core.mail.backends.locmem.EmailBackend.send_messages",
        side_effect=ConnectionRefusedError,
    ):
        subscription = finish_checkout(nomos, VICTIM, lead_id=lead_of(mallory))
        deliver(nomos, subscription, django_capture_on_commit_callbacks)
    assert NomosLinkClaim.objects.get().status == "pending"
    assert any("could not be sent (ConnectionRefusedError)" in line
               for line in no_secrets_in_logs.lines)


def test_a_customer_without_address_is_held_for_an_operator(
    nomos, plan, mallory, django_capture_on_commit_callbacks
):
    subscription = finish_checkout(nomos, VICTIM, lead_id=lead_of(mallory))
    nomos.customers[subscription["customer"]]["email"] = None
    deliver(nomos, subscription, django_capture_on_commit_callbacks)
    assert NomosLinkClaim.objects.get().sent_at is None
    assert mail.outbox == []


def test_the_confirmation_mail_speaks_german(
    nomos, plan, mallory, settings, django_capture_on_commit_callbacks
):
    settings.LANGUAGE_CODE = "de"
    from django.utils import translation

    with translation.override("de"):
        subscription = finish_checkout(nomos, VICTIM, lead_id=lead_of(mallory))
        deliver(nomos, subscription, django_capture_on_commit_callbacks)
    message = mail.outbox[0]
    assert message.subject == "Bestätigen Sie, wer Ihren Stromvertrag sehen darf"
    assert "jemand möchte Ihren Stromvertrag" in message.body
    assert link_in(message).startswith("/nomos/link/confirm/")


# -- the decisions, one by one -------------------------------------------------------------


def test_confirming_one_claim_supersedes_the_others_on_that_customer(django_user_model):
    from nomos_billing import linking

    customer = NomosCustomer.objects.create(customer_id="cus_two", email="c@example.com")
    first, second = (
        django_user_model.objects.create_user(n, f"{n}@example.com", "pw") for n in ("a1", "a2")
    )
    assert linking.hold(customer, first, "by_lead") is True
    assert linking.hold(customer, first, "by_lead") is False
    assert linking.hold(customer, second, "by_metadata") is True
    claim = NomosLinkClaim.objects.get(user=first)

    assert confirmation.confirm_by_mailbox(claim, first) == "linked"

    other = NomosLinkClaim.objects.get(user=second)
    assert (other.status, other.decided_by) == ("rejected", "superseded")
    assert confirmation.confirm_by_mailbox(other, second) == "used"


def test_a_refused_link_leaves_the_claim_pending_in_memory_too(django_user_model):
    customer = NomosCustomer.objects.create(customer_id="cus_t", email="c@example.com")
    user = django_user_model.objects.create_user("t", "t@example.com", "pw")
    NomosCustomer.objects.create(customer_id="cus_own", email="t@example.com", user=user)
    claim = NomosLinkClaim.objects.create(customer=customer, user=user, rule="by_lead")
    operator = django_user_model.objects.create_superuser("op", "op@example.com", "pw")

    assert confirmation.confirm_by_operator(claim, operator) == "taken"
    assert (claim.status, claim.decided_by) == ("pending", "")


def test_an_operator_cannot_confirm_for_an_inactive_user(django_user_model):
    customer = NomosCustomer.objects.create(customer_id="cus_i", email="c@example.com")
    user = django_user_model.objects.create_user("i", "i@example.com", "pw", is_active=False)
    claim = NomosLinkClaim.objects.create(customer=customer, user=user, rule="by_lead")
    operator = django_user_model.objects.create_superuser("op", "op@example.com", "pw")
    assert confirmation.confirm_by_operator(claim, operator) == "wrong_user"
    assert NomosCustomer.objects.get(pk=customer.pk).user is None


def test_a_rejection_is_signalled_with_who_rejected(django_user_model, connect_receiver):
    from nomos_billing.signals import customer_link_rejected

    customer = NomosCustomer.objects.create(customer_id="cus_r", email="c@example.com")
    user = django_user_model.objects.create_user("r", "r@example.com", "pw")
    claim = NomosLinkClaim.objects.create(customer=customer, user=user, rule="by_lead")
    operator = django_user_model.objects.create_superuser("op", "op@example.com", "pw")
    seen: list[dict[str, Any]] = []
    connect_receiver(customer_link_rejected, lambda sender, **kw: seen.append(kw))
    assert confirmation.reject(claim, operator) is True
    assert confirmation.reject(claim, operator) is False
    assert [(s["customer"], s["user"], s["rejected_by"]) for s in seen] == [
        (customer, user, f"admin:{operator.pk}")
    ]


def test_another_accounts_visit_is_logged_without_the_link(held, victim_user,
                                                          no_secrets_in_logs):
    signed_in(victim_user).post(held["url"])
    token = held["url"].split("?t=")[1]
    lines = no_secrets_in_logs.lines
    assert any("followed while signed in as another account" in line for line in lines)
    assert not any(token in line for line in lines)


def test_pending_claim_is_none_for_anything_but_a_signed_in_user():
    from types import SimpleNamespace

    assert confirmation.pending_claim(None) is None
    assert confirmation.pending_claim(SimpleNamespace(pk=1)) is None
    assert confirmation.pending_claim(SimpleNamespace(pk=None, is_authenticated=True)) is None


def test_a_site_url_with_a_trailing_slash_makes_one_clean_link(
    nomos, plan, mallory, settings, django_capture_on_commit_callbacks
):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "SITE_URL": "http://testserver/"}
    subscription = finish_checkout(nomos, VICTIM, lead_id=lead_of(mallory))
    deliver(nomos, subscription, django_capture_on_commit_callbacks)
    assert "http://testserver/nomos/link/confirm/?t=" in mail.outbox[0].body


# -- sending again, at its edges -----------------------------------------------------------


def test_sending_again_exhausted_asks_nobody_to_wait_and_offers_no_button(held, mallory):
    NomosLinkClaim.objects.update(sends=confirmation.MAX_SENDS)
    response = signed_in(mallory).post("/nomos/link/resend/")
    assert response.status_code == 429
    assert "Retry-After" not in response  # waiting will not help
    assert 'action="/nomos/link/resend/"' not in response.content.decode()
    assert len(mail.outbox) == 1


def test_the_last_allowed_mail_still_has_its_button(held, mallory):
    NomosLinkClaim.objects.update(sends=confirmation.MAX_SENDS - 1)
    page = signed_in(mallory).get("/nomos/portal/").content.decode()
    assert 'action="/nomos/link/resend/"' in page


def test_sending_again_is_allowed_the_moment_the_interval_has_passed(held, mallory):
    claim = NomosLinkClaim.objects.get()
    exactly = claim.sent_at + confirmation.RESEND_INTERVAL
    with mock.patch("nomos_billing.confirmation.timezone.now", return_value=exactly):
        response = signed_in(mallory).post("/nomos/link/resend/")
    assert response.status_code == 200
    assert len(mail.outbox) == 2


def test_sending_again_links_to_the_address_it_is_given(held, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "SITE_URL": "https://shop.example"}
    claim = NomosLinkClaim.objects.get()
    NomosLinkClaim.objects.update(sent_at=timezone.now() - confirmation.RESEND_INTERVAL * 2)
    claim.refresh_from_db()
    assert confirmation.resend(claim, base_url="https://other.example") == (True, 0)
    assert "https://other.example/nomos/link/confirm/?t=" in mail.outbox[-1].body
    assert "https://shop.example" not in mail.outbox[-1].body


# -- decisions on a claim that was decided meanwhile ----------------------------------------


def _claim(django_user_model: Any, name: str) -> NomosLinkClaim:
    customer = NomosCustomer.objects.create(customer_id=f"cus_{name}", email="c@example.com")
    user = django_user_model.objects.create_user(name, f"{name}@example.com", "pw")
    return NomosLinkClaim.objects.create(customer=customer, user=user, rule="by_lead")


def test_an_operator_confirming_a_decided_claim_is_told_it_was_used(django_user_model):
    claim = _claim(django_user_model, "u1")
    operator = django_user_model.objects.create_superuser("op", "op@example.com", "pw")
    assert confirmation.reject(claim, operator) is True
    assert confirmation.confirm_by_operator(claim, operator) == "used"
    assert NomosCustomer.objects.get(pk=claim.customer_id).user is None


def test_a_claim_another_request_decided_meanwhile_links_nobody(django_user_model):
    claim = _claim(django_user_model, "u2")
    operator = django_user_model.objects.create_superuser("op", "op@example.com", "pw")
    stale = NomosLinkClaim.objects.get(pk=claim.pk)  # loaded while still pending
    assert confirmation.reject(claim, operator) is True

    assert confirmation.confirm_by_operator(stale, operator) == "used"
    assert confirmation.confirm_by_mailbox(stale, stale.user) == "used"
    assert NomosCustomer.objects.get(pk=claim.customer_id).user is None
    assert NomosLinkClaim.objects.get(pk=claim.pk).status == "rejected"


def test_a_decision_is_stored_with_its_time_and_who_made_it(django_user_model):
    claim = _claim(django_user_model, "u3")
    operator = django_user_model.objects.create_superuser("op", "op@example.com", "pw")
    before = timezone.now()
    assert confirmation.confirm_by_operator(claim, operator) == "linked"
    stored = NomosLinkClaim.objects.get(pk=claim.pk)
    assert (stored.status, stored.decided_by) == ("confirmed", f"admin:{operator.pk}")
    assert stored.decided_at is not None and stored.decided_at >= before
    assert stored.decided_at == claim.decided_at


def test_a_rejection_signal_carries_the_claim(django_user_model, connect_receiver):
    from nomos_billing.signals import customer_link_rejected

    claim = _claim(django_user_model, "u4")
    operator = django_user_model.objects.create_superuser("op", "op@example.com", "pw")
    seen: list[Any] = []
    connect_receiver(customer_link_rejected, lambda sender, **kw: seen.append(kw["claim"]))
    confirmation.reject(claim, operator)
    assert [(c.pk, c.status) for c in seen] == [(claim.pk, "rejected")]


def test_pending_claim_is_none_for_a_user_object_that_is_not_signed_in(django_user_model):
    from types import SimpleNamespace

    claim = _claim(django_user_model, "u5")
    assert confirmation.pending_claim(SimpleNamespace(pk=claim.user_id,
                                                     is_authenticated=False)) is None
    assert confirmation.pending_claim(claim.user) == claim


def test_pending_claim_reads_the_claim_and_its_customer_in_one_query(
    django_user_model, django_assert_num_queries
):
    claim = _claim(django_user_model, "u6")
    user = django_user_model.objects.get(pk=claim.user_id)
    with django_assert_num_queries(1):
        found = confirmation.pending_claim(user)
        assert found is not None and found.customer.customer_id == "cus_u6"
        assert confirmation.pending_claim(user) is found


def test_a_user_who_holds_a_customer_is_not_held_for_another(django_user_model, caplog):
    from nomos_billing import linking

    user = django_user_model.objects.create_user("h1", "h1@example.com", "pw")
    NomosCustomer.objects.create(customer_id="cus_own_h1", user=user)
    other = NomosCustomer.objects.create(customer_id="cus_other_h1", email="o@example.com")
    caplog.set_level("WARNING", logger="nomos_billing.linking")

    assert linking.hold(other, user, "by_lead") is False
    assert not NomosLinkClaim.objects.exists()
    assert [r.getMessage() for r in caplog.records if r.name == "nomos_billing.linking"] == [
        f"Nomos customer cus_other_h1 resolves (by_lead) to user {user.pk}, who is already "
        "linked to another customer; not held"
    ]


def test_a_held_link_is_announced_by_the_customer_model_and_logged(
    django_user_model, caplog, connect_receiver
):
    from nomos_billing import linking

    user = django_user_model.objects.create_user("h2", "h2@example.com", "pw")
    customer = NomosCustomer.objects.create(customer_id="cus_h2", email="o@example.com")
    seen: list[Any] = []
    connect_receiver(customer_link_held,
                     lambda sender, **kw: seen.append(kw["claim"]), sender=NomosCustomer)
    caplog.set_level("INFO", logger="nomos_billing.linking")
    assert linking.hold(customer, user, "by_lead") is True
    assert [c.user_id for c in seen] == [user.pk]
    [line] = [r.getMessage() for r in caplog.records if r.name == "nomos_billing.linking"]
    assert line.startswith("Nomos customer cus_h2 ") and f"user {user.pk}" in line


def test_mailing_one_claim_leaves_every_other_pending_claim_alone(
    django_user_model, django_capture_on_commit_callbacks
):
    first, second = _claim(django_user_model, "m1"), _claim(django_user_model, "m2")
    assert confirmation.send_confirmation(first) is True
    untouched = NomosLinkClaim.objects.get(pk=second.pk)
    assert (untouched.sends, untouched.sent_at, untouched.nonce) == (0, None, second.nonce)
    assert [m.to for m in mail.outbox] == [["c@example.com"]]


def test_a_signed_value_that_is_not_json_is_an_invalid_link():
    class NotJson:
        def dumps(self, obj: Any) -> bytes:
            return b"\xff not json"

    token = signing.TimestampSigner(salt=confirmation.SALT).sign_object(
        None, serializer=NotJson)
    assert confirmation.read_token(token) == (None, "invalid")


# -- what the survivors of the mutation run showed untested ----------------------------------


def test_confirming_a_claim_leaves_the_claims_on_other_customers_pending(django_user_model):
    # Only the confirmed customer's other claims are moot; another customer's wait on their
    # own mailbox.
    claim, elsewhere = _claim(django_user_model, "s1"), _claim(django_user_model, "s2")
    operator = django_user_model.objects.create_superuser("op", "op@example.com", "pw")

    assert confirmation.confirm_by_operator(claim, operator) == "linked"

    other = NomosLinkClaim.objects.get(pk=elsewhere.pk)
    assert (other.status, other.decided_by, other.decided_at) == ("pending", "", None)


def test_a_refused_link_keeps_the_customer_and_user_it_was_read_with(
    django_user_model, django_assert_num_queries
):
    # Rolled back: only the decision is read again, not the rows the admin already joined.
    customer = NomosCustomer.objects.create(customer_id="cus_k", email="c@example.com")
    user = django_user_model.objects.create_user("k", "k@example.com", "pw")
    NomosCustomer.objects.create(customer_id="cus_own_k", email="k@example.com", user=user)
    claim = NomosLinkClaim.objects.select_related("customer", "user").get(
        pk=NomosLinkClaim.objects.create(customer=customer, user=user, rule="by_lead").pk)
    operator = django_user_model.objects.create_superuser("op", "op@example.com", "pw")

    assert confirmation.confirm_by_operator(claim, operator) == "taken"
    with django_assert_num_queries(0):
        assert (claim.customer.customer_id, claim.user.username) == ("cus_k", "k")


def test_a_confirmation_link_reads_its_claim_customer_and_user_in_one_query(
    django_user_model, django_assert_num_queries
):
    from urllib.parse import parse_qs, urlsplit

    assert confirmation.send_confirmation(_claim(django_user_model, "q1")) is True
    [token] = parse_qs(urlsplit(link_in(mail.outbox[0])).query)["t"]
    with django_assert_num_queries(1):
        found, problem = confirmation.read_token(token)
        assert problem is None and found is not None
        assert (found.customer.customer_id, found.user.username) == ("cus_q1", "q1")


def test_without_an_address_of_this_site_no_mail_is_sent_and_the_caller_is_told(
    django_user_model, settings, caplog
):
    # No SITE_URL and no django.contrib.sites (W061): "send again" must not say it was sent.
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "SITE_URL": None}
    claim = _claim(django_user_model, "n1")
    caplog.set_level("ERROR", logger="nomos_billing.confirmation")

    assert confirmation.send_confirmation(claim) is False
    assert mail.outbox == []
    assert NomosLinkClaim.objects.get(pk=claim.pk).sends == 0
    assert any("no confirmation mail" in m for m in caplog.messages)


def test_the_confirmation_mail_says_how_many_days_its_link_works(django_user_model, settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "LINK_CONFIRMATION_DAYS": 5}
    assert confirmation.send_confirmation(_claim(django_user_model, "d1")) is True
    assert "open this link within 5 days" in " ".join(mail.outbox[0].body.split())


def test_a_site_url_under_a_path_keeps_its_path_in_the_link(django_user_model, settings):
    # Only trailing slashes are trimmed: a path ending in a capital X (or any letter) stays.
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "SITE_URL": "https://example.com/BOX/"}
    assert confirmation.send_confirmation(_claim(django_user_model, "p1")) is True
    assert "https://example.com/BOX/nomos/link/confirm/?t=" in mail.outbox[0].body


def test_a_link_held_outside_any_request_budget_is_mailed(
    django_user_model, django_capture_on_commit_callbacks
):
    # A hold from a command or a shell has no budget: the mail goes out, with no limit.
    from nomos_billing import budget, linking

    customer = NomosCustomer.objects.create(customer_id="cus_nb", email="c@example.com")
    user = django_user_model.objects.create_user("nb", "nb@example.com", "pw")
    assert budget.remaining() is None
    with django_capture_on_commit_callbacks(execute=True):
        assert linking.hold(customer, user, "by_lead") is True
    assert [m.to for m in mail.outbox] == [["c@example.com"]]
    assert NomosLinkClaim.objects.get(user=user).sends == 1


def test_an_account_whose_address_is_not_a_string_is_named_by_its_login_name():
    # A user model may keep its address as a value object: that is no address to mask, so
    # the page names the account by its login name instead of by nothing.
    from types import SimpleNamespace

    user = SimpleNamespace(email=object(), get_username=lambda: "alice")
    assert confirmation.account_label(user) == "a\u2022\u2022\u2022\u2022"
