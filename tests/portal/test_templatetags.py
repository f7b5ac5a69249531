"""``{% load nomos_billing %}``: the button and the URL, rendered and compared as exact HTML
for anonymous, linked and unlinked users, in English and German, within one query."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.template import Context, Template
from django.test import RequestFactory
from django.utils import timezone, translation

from nomos_billing.models import NomosCustomer, NomosLead
from nomos_billing.sandbox import seed

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def english() -> Any:
    with translation.override("en"):
        yield


CSRF_INPUT = '<input type="hidden" name="csrfmiddlewaretoken" value="TOKEN">'


@pytest.fixture
def alice(django_user_model: Any) -> Any:
    user = django_user_model.objects.create_user("alice", "alice@example.com", "pw")
    NomosCustomer.objects.create(user=user, customer_id=seed.ALICE)
    return django_user_model.objects.get(pk=user.pk)  # nothing cached


@pytest.fixture
def bob(django_user_model: Any) -> Any:
    user = django_user_model.objects.create_user("bob", "bob@example.com", "pw")
    return django_user_model.objects.get(pk=user.pk)


def render(source: str, user: Any, **extra: Any) -> str:
    request = RequestFactory().get("/")
    request.user = user
    context = Context({"request": request, "user": user, "csrf_token": "TOKEN", **extra})
    return Template("{% load nomos_billing %}" + source).render(context)


# -- the button, linked user ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "html"),
    [
        (
            "{% nomos_portal_button %}",
            f'<form class="nomos-portal-form" method="post" action="/nomos/portal/">{CSRF_INPUT}'
            '<button type="submit" class="nomos-portal-button">Open customer portal</button>'
            "</form>",
        ),
        (
            "{% nomos_portal_button label='My bills' next='/invoices/inv_abc' css_class='btn' %}",
            f'<form class="nomos-portal-form" method="post" action="/nomos/portal/">{CSRF_INPUT}'
            '<input type="hidden" name="next" value="/invoices/inv_abc">'
            '<button type="submit" class="btn">My bills</button></form>',
        ),
        (
            "{% nomos_portal_button method='get' next='/invoices' %}",
            '<a class="nomos-portal-button" href="/nomos/portal/?next=/invoices">'
            "Open customer portal</a>",
        ),
        (
            "{% nomos_portal_button label=evil_label next=evil_next %}",
            f'<form class="nomos-portal-form" method="post" action="/nomos/portal/">{CSRF_INPUT}'
            '<input type="hidden" name="next" value="&quot;&gt;&lt;script&gt;">'
            '<button type="submit" class="nomos-portal-button">&lt;b&gt;x&lt;/b&gt;</button>'
            "</form>",
        ),
    ],
    ids=["default", "label-next-class", "get-link", "escaped"],
)
def test_linked_user_gets_the_post_button(alice: Any, source: str, html: str) -> None:
    # Values from the context are escaped (string literals in a template are trusted).
    assert render(source, alice, evil_label="<b>x</b>", evil_next='"><script>') == html


def test_anonymous_user_gets_nothing() -> None:
    assert render("[{% nomos_portal_button %}]", AnonymousUser()) == "[]"


def test_no_user_in_context_renders_nothing() -> None:
    assert (
        Template("{% load nomos_billing %}[{% nomos_portal_button %}]").render(Context({})) == "[]"
    )


# -- the button, unlinked user -------------------------------------------------------------


def test_unlinked_user_gets_a_link_to_the_friendly_page(bob: Any) -> None:
    assert render("{% nomos_portal_button %}", bob) == (
        '<a class="nomos-portal-button" href="/nomos/portal/">Open customer portal</a>'
    )


def test_unlinked_user_gets_the_sign_up_link(bob: Any, settings: Any) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "SIGNUP_URL": "/signup/"}
    assert render("{% nomos_portal_button %}", bob) == (
        '<a class="nomos-portal-button" href="/signup/">Sign up for electricity</a>'
    )


def test_unlinked_user_gets_the_start_link_when_a_plan_is_set(bob: Any, settings: Any) -> None:
    settings.NOMOS_BILLING = {
        **settings.NOMOS_BILLING,
        "PLAN_ID": "pln_x",
        "SIGNUP_URL": "/signup/",
    }
    assert render("{% nomos_portal_button css_class='cta' start_label='Go!' %}", bob) == (
        '<a class="cta" href="/nomos/portal/start/">Go!</a>'
    )
    assert render("{% nomos_portal_button %}", bob) == (
        '<a class="nomos-portal-button" href="/nomos/portal/start/">Switch to our electricity</a>'
    )


@pytest.mark.parametrize(
    ("age", "variant"), [(timedelta(hours=1), "portal"), (timedelta(days=2), "start")]
)
def test_unlinked_user_back_from_a_recent_checkout_gets_the_portal_button(
    django_user_model: Any, settings: Any, age: timedelta, variant: str
) -> None:
    # Back from Nomos' checkout before its webhook: the portal view links him (by his lead).
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "PLAN_ID": "pln_x"}
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "pw")
    NomosLead.objects.create(lead_id="lead_bob", user=bob)
    NomosLead.objects.filter(user=bob).update(created_at=timezone.now() - age)

    html = render("{% nomos_portal_button %}", django_user_model.objects.get(pk=bob.pk))

    if variant == "portal":
        assert html.startswith(
            '<form class="nomos-portal-form" method="post" action="/nomos/portal/">'
        )
    else:
        assert html == (
            '<a class="nomos-portal-button" href="/nomos/portal/start/">'
            "Switch to our electricity</a>"
        )


@pytest.mark.parametrize(
    ("settled", "variant"),
    [("stored, being linked", "portal"), ("held", "held"), ("rejected", "start"),
     ("linked", "portal"), ("linked to another user", "start"),
     ("another user's claim rejected", "portal")],
)
def test_the_moment_the_webhook_stores_the_checkout_keeps_the_portal_button(
    django_user_model: Any, settings: Any, settled: str, variant: str
) -> None:
    # The webhook stores the subscription (naming bob's lead), then links its customer: in
    # between, bob is not linked and his lead is named; the button must not offer a second
    # sign-up then. Once a claim was raised on the customer, the claim decides.
    from nomos_billing.models import NomosLinkClaim, NomosSubscription

    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "PLAN_ID": "pln_x"}
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "pw")
    NomosLead.objects.create(lead_id="lead_bob", user=bob)
    customer = NomosCustomer.objects.create(customer_id="cus_new", email="bob@example.com")
    NomosSubscription.objects.create(subscription_id="sub_new", customer=customer,
                                     lead_id="lead_bob")
    if settled == "linked":
        NomosCustomer.objects.filter(pk=customer.pk).update(user=bob)
    elif settled == "linked to another user":
        other = django_user_model.objects.create_user("carol", "carol@example.com", "pw")
        NomosCustomer.objects.filter(pk=customer.pk).update(user=other)
    elif settled == "another user's claim rejected":
        other = django_user_model.objects.create_user("carol", "carol@example.com", "pw")
        NomosLinkClaim.objects.create(customer=customer, user=other, rule="by_metadata",
                                      status="rejected")
    elif settled in ("held", "rejected"):
        NomosLinkClaim.objects.create(customer=customer, user=bob, rule="by_lead",
                                      status="pending" if settled == "held" else "rejected")

    html = render("{% nomos_portal_button %}", django_user_model.objects.get(pk=bob.pk))
    # Read on its own (a page that asked "linked?" a moment before the webhook linked him):
    # never "nothing" while the checkout is his or on its way to him.
    from nomos_billing.leads import has_recent_checkout

    expected = settled not in ("rejected", "linked to another user")
    assert has_recent_checkout(django_user_model.objects.get(pk=bob.pk)) is expected

    if variant == "portal":
        assert html.startswith(
            '<form class="nomos-portal-form" method="post" action="/nomos/portal/">'
        )
    elif variant == "held":
        assert html.startswith('<div class="nomos-held">'), html
    else:
        assert html == (
            '<a class="nomos-portal-button" href="/nomos/portal/start/">'
            "Switch to our electricity</a>"
        )


# -- cost ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "queries"),
    # bob: his customer, a link held for him, then a recent checkout of his
    [("alice", 1), ("bob", 3)],
)
def test_several_buttons_on_one_page_cost_what_one_costs(
    request: pytest.FixtureRequest, who: str, queries: int, django_assert_num_queries: Any
) -> None:
    user = request.getfixturevalue(who)
    with django_assert_num_queries(queries):
        render(
            "{% nomos_portal_button %}{% nomos_portal_button method='get' %}"
            "{% nomos_portal_button next='/invoices' %}{% nomos_portal_url %}",
            user,
        )


def test_rendering_mints_nothing(alice: Any, nomos: Any) -> None:
    render("{% nomos_portal_button %}", alice)
    assert nomos.calls == {}


# -- the URL -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "html"),
    [
        ("{% nomos_portal_url %}", "/nomos/portal/"),
        (
            "{% nomos_portal_url next='/invoices/inv_abc' %}",
            "/nomos/portal/?next=/invoices/inv_abc",
        ),
        ("{% nomos_portal_url next='/a b&c=d' %}", "/nomos/portal/?next=/a%20b%26c%3Dd"),
        ("{% nomos_portal_url next='\"><x>' %}", "/nomos/portal/?next=%22%3E%3Cx%3E"),
        (
            "{% nomos_portal_url next='/invoices' as u %}[{{ u }}]",
            "[/nomos/portal/?next=/invoices]",
        ),
    ],
)
def test_portal_url(alice: Any, source: str, html: str) -> None:
    assert render(source, alice) == html


@pytest.mark.parametrize(
    "source",
    [
        "{% nomos_portal_url %}",
        "{% nomos_portal_url next='/invoices' %}",
        "{% nomos_portal_url next='/invoices' as u %}{% if u %}<a href='{{ u }}'>x</a>{% endif %}",
    ],
)
def test_portal_url_is_empty_for_anonymous_visitors(source: str) -> None:
    # Like the button: no link an anonymous visitor could only follow to a login page.
    assert render(source, AnonymousUser()) == ""


# -- German --------------------------------------------------------------------------------


def test_button_speaks_german(alice: Any, bob: Any, settings: Any) -> None:
    with translation.override("de"):
        assert render("{% nomos_portal_button %}", alice) == (
            f'<form class="nomos-portal-form" method="post" action="/nomos/portal/">{CSRF_INPUT}'
            '<button type="submit" class="nomos-portal-button">Kundenportal öffnen</button>'
            "</form>"
        )
        settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "PLAN_ID": "pln_x"}
        assert render("{% nomos_portal_button %}", bob) == (
            '<a class="nomos-portal-button" href="/nomos/portal/start/">'
            "Zu unserem Strom wechseln</a>"
        )
