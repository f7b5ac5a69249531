"""Hosted checkout links: ``checkout_url(user)`` and ``{% nomos_checkout_url %}`` put the user's
signed reference into ``metadata.<METADATA_USER_KEY>`` of the plan's checkout URL. End to end
through the sandbox's hosted checkout (which, like Nomos, copies every ``metadata.<key>`` of the
URL onto the subscription): a URL naming the superuser's id links nobody; one made by
``checkout_url(alice)`` links alice."""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import pytest
import requests
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ImproperlyConfigured
from django.template import Context, Template
from django.test import RequestFactory

from nomos_billing.checks import check_settings
from nomos_billing.linking import checkout_url, resolve_reference
from nomos_billing.models import NomosCustomer
from nomos_billing.testing import post_event

pytestmark = pytest.mark.django_db

PLAN = "pln_sandbox_home"
LUMIO = "https://lumio.checkout.energy/"


def with_settings(settings: Any, **values: Any) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, **values}


def query(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


# -- the URL ----------------------------------------------------------------------------------


def test_checkout_url_carries_the_signed_reference_and_prefills(settings, alice):
    with_settings(settings, CHECKOUT_URL=LUMIO)
    url = checkout_url(alice, zip="10115", usage=3200)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "lumio.checkout.energy", "/")
    params = query(url)
    assert (params["zip"], params["usage"]) == ("10115", "3200")
    assert resolve_reference(params["metadata.django_user_id"]) == alice
    assert set(params) == {"zip", "usage", "metadata.django_user_id"}


def test_checkout_url_without_prefill_and_with_a_custom_key_and_query(settings, alice):
    with_settings(settings, CHECKOUT_URL=LUMIO + "?campaign=spring", METADATA_USER_KEY="uid")
    params = query(checkout_url(alice))
    assert params["campaign"] == "spring"
    assert resolve_reference(params["metadata.uid"]) == alice
    assert "zip" not in params and "usage" not in params


def test_checkout_url_needs_the_setting(settings, alice):
    with pytest.raises(ImproperlyConfigured, match="CHECKOUT_URL"):
        checkout_url(alice)


# -- the tag ----------------------------------------------------------------------------------


def render(source: str, user: Any) -> str:
    request = RequestFactory().get("/")
    request.user = user
    return Template("{% load nomos_billing %}" + source).render(
        Context({"request": request, "user": user})
    )


def test_tag_renders_the_users_checkout_url_escaped_for_html(settings, alice):
    with_settings(settings, CHECKOUT_URL=LUMIO)
    html = render('<a href="{% nomos_checkout_url zip="10115" usage=2500 %}">x</a>', alice)
    href = re.search(r'href="([^"]+)"', html).group(1)
    assert "&amp;" in href
    url = href.replace("&amp;", "&")
    assert url.startswith(LUMIO + "?")
    assert query(url)["zip"] == "10115"
    assert resolve_reference(query(url)["metadata.django_user_id"]) == alice


def test_tag_is_empty_for_anonymous_visitors_and_without_the_setting(settings, alice):
    with_settings(settings, CHECKOUT_URL=LUMIO)
    assert render("[{% nomos_checkout_url %}]", AnonymousUser()) == "[]"
    with_settings(settings, CHECKOUT_URL=None)
    assert render("[{% nomos_checkout_url %}]", alice) == "[]"


# -- the system check -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (LUMIO, True),
        ("http://127.0.0.1:8765/checkout/pln_sandbox_home/", True),
        ("http://lumio.checkout.energy/", False),
        ("lumio.checkout.energy", False),
        ("https://user:pw@lumio.checkout.energy/", False),
        (42, False),
        ("", False),
    ],
)
def test_checkout_url_check(settings, value, ok):
    with_settings(settings, CHECKOUT_URL=value)
    found = {m.id for m in check_settings()}
    assert ("nomos_billing.E041" not in found) is ok


# -- end to end through the sandbox's hosted checkout -----------------------------------------


def sign_up(url: str, email: str) -> str:
    """Open the checkout URL as a visitor would, fill in its form (keeping what the page
    carries, as a browser does) and submit it; the new subscription's id."""
    page = requests.get(url, timeout=5)
    assert page.status_code == 200, page.text
    form = re.search(r'<form[^>]*action="([^"]+)"[^>]*>(.*?)</form>', page.text, re.S)
    assert form, page.text
    fields = {
        html.unescape(name): html.unescape(value)
        for name, value in re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"',
                                      form.group(2))
    }
    fields.update(email=email, first_name="New", last_name="Customer")
    fields.setdefault("zip", "10115")
    fields["zip"] = fields["zip"] or "10115"
    fields["usage"] = fields.get("usage") or "2500"
    action = urljoin(url, html.unescape(form.group(1)))
    done = requests.post(action, data=fields, timeout=5)
    assert done.status_code == 200, done.text
    return re.search(r'id="subscription-id">([^<]+)<', done.text).group(1)


def deliver(client: Any, nomos: Any, subscription_id: str) -> NomosCustomer:
    event = nomos.build_event("subscription.created", {"subscription": subscription_id})
    assert post_event(client, event).status_code == 200
    return NomosCustomer.objects.get(subscriptions__subscription_id=subscription_id)


@pytest.fixture
def sandbox_checkout(nomos: Any, settings: Any) -> str:
    url = f"{nomos.checkout_origin(PLAN)}/"
    with_settings(settings, CHECKOUT_URL=url)
    return url


def test_hosted_checkout_url_naming_the_superusers_id_links_nobody(
    client, nomos, sandbox_checkout, superuser, alice
):
    attack = sandbox_checkout + "?" + urlencode({"metadata.django_user_id": str(superuser.pk)})
    sub_id = sign_up(attack, "stranger@example.com")
    assert nomos.subscriptions[sub_id]["metadata"] == {"django_user_id": str(superuser.pk)}

    customer = deliver(client, nomos, sub_id)

    assert customer.user is None
    assert not NomosCustomer.objects.filter(user=superuser).exists()


def test_edited_checkout_url_links_nobody(client, nomos, sandbox_checkout, superuser, alice):
    # alice's URL with the id part of her reference swapped for the superuser's.
    url = checkout_url(alice)
    reference = query(url)["metadata.django_user_id"]
    forged = f"{superuser.pk}:{reference.split(':', 1)[1]}"
    sub_id = sign_up(sandbox_checkout + "?" + urlencode({"metadata.django_user_id": forged}),
                     "stranger@example.com")
    assert deliver(client, nomos, sub_id).user is None


def test_hosted_checkout_from_checkout_url_links_alice(client, nomos, sandbox_checkout, alice):
    sub_id = sign_up(checkout_url(alice, zip="80331", usage=1800), "alice@example.com")
    stored = nomos.subscriptions[sub_id]
    assert (stored["address"]["zip"], stored["estimated_usage"]) == ("80331", 1800)

    customer = deliver(client, nomos, sub_id)

    assert (customer.user, customer.linked_by) == (alice, "by_metadata")
