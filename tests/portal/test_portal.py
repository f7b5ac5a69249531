"""``portal.mint_portal_link``: one query for the customer, one mint per call, ``next`` swapped
in only when safe, links outside the allowed portal hosts refused (and never logged)."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest
import requests

from nomos_billing.exceptions import NomosAPIError, NomosNotLinked
from nomos_billing.leads import has_recent_checkout
from nomos_billing.models import NomosCustomer, NomosLead
from nomos_billing.portal import (
    INVALID_LINK,
    get_customer,
    is_allowed_link,
    link_kind,
    mint_portal_link,
    with_next,
)
from nomos_billing.sandbox import seed

pytestmark = pytest.mark.django_db

#: Production's API with the package's default hosts (tests/settings.py adds the sandbox's).
PRODUCTION = {"API_BASE_URL": "https://api.nomos.energy", "PORTAL_HOSTS": None,
              "CHECKOUT_HOSTS": None}


@pytest.fixture
def alice(django_user_model: Any) -> Any:
    user = django_user_model.objects.create_user("alice", "alice@example.com", "pw")
    NomosCustomer.objects.create(user=user, customer_id=seed.ALICE, email="alice@example.com")
    # A fresh instance, as a request would load it: nothing cached yet.
    return django_user_model.objects.get(pk=user.pk)


def query(link: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(link).query, keep_blank_values=True)


def test_linked_user_gets_a_sandbox_link_for_their_customer(nomos: Any, alice: Any) -> None:
    link = mint_portal_link(alice)

    assert link.startswith(nomos.portal_origin + "/auth/confirm?")
    assert query(link)["next"] == ["/overview"]
    assert nomos.count("POST /admin/magic_link") == 1
    sent = [e for e in nomos.request_log if e["key"] == "POST /admin/magic_link"]
    assert (
        b'"customerId": "cus_sandbox_alice"' in sent[0]["body"]
        or b'"customerId":"cus_sandbox_alice"' in sent[0]["body"]
    )


def test_lookup_costs_one_query(nomos: Any, alice: Any, django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(1):
        mint_portal_link(alice)
        mint_portal_link(alice)


def test_the_button_and_the_click_share_one_lookup(
    nomos: Any, alice: Any, django_assert_num_queries: Any
) -> None:
    # The template tag loads the row; the click then needs no query of its own.
    with django_assert_num_queries(1):
        assert get_customer(alice).customer_id == seed.ALICE
        mint_portal_link(alice)


def test_a_user_linked_after_a_refused_click_is_seen_on_the_same_object(
    nomos: Any, bob: Any
) -> None:
    with pytest.raises(NomosNotLinked):
        mint_portal_link(bob)

    NomosCustomer.objects.create(user=bob, customer_id=seed.ALICE)

    assert mint_portal_link(bob).startswith(nomos.portal_origin + "/auth/confirm?")
    assert nomos.count("POST /admin/magic_link") == 1


def test_a_user_stand_in_is_not_linked(nomos: Any, alice: Any) -> None:
    # A token-auth stand-in that happens to carry a real user's pk: alice has a customer and a
    # fresh lead, yet the stand-in is nobody's user object and gets neither.
    NomosLead.objects.create(lead_id="lead_alice", user=alice)

    class TokenUser:
        is_authenticated = True
        pk = alice.pk

    with pytest.raises(NomosNotLinked):
        mint_portal_link(TokenUser())
    assert has_recent_checkout(TokenUser()) is False
    assert nomos.calls == {}


def test_every_call_mints_a_new_link(nomos: Any, alice: Any) -> None:
    links = {mint_portal_link(alice) for _ in range(3)}
    assert len(links) == 3
    assert nomos.count("POST /admin/magic_link") == 3


def test_safe_deep_link_replaces_next_and_keeps_the_other_parameters(
    nomos: Any, alice: Any
) -> None:
    link = mint_portal_link(alice, next="/invoices/inv_abc")

    params = parse_qsl(urlsplit(link).query)
    assert [k for k, _ in params] == ["token_hash", "type", "next"]
    assert dict(params)["next"] == "/invoices/inv_abc"
    assert dict(params)["type"] == "magiclink"
    first = requests.get(link, timeout=5)
    assert first.status_code == 200
    assert list(nomos.portal_sessions) == [{"customer_id": seed.ALICE, "next": "/invoices/inv_abc"}]


@pytest.mark.parametrize(
    "hostile", ["//evil.com", "https://evil.com", "/../x", "/\r\nSet-Cookie: x=1", "/" + "a" * 5000]
)
def test_unsafe_deep_link_is_dropped_and_logged_escaped(
    nomos: Any, alice: Any, hostile: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nomos_billing.portal")
    link = mint_portal_link(alice, next=hostile)

    assert urlsplit(link).netloc == urlsplit(nomos.portal_origin).netloc
    assert query(link)["next"] == ["/overview"]
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1
    assert seed.ALICE in dropped[0]
    assert "\r" not in dropped[0] and "\n" not in dropped[0] and len(dropped[0]) < 250


def test_user_without_customer_raises_not_linked_and_calls_nothing(nomos: Any, bob: Any) -> None:
    with pytest.raises(NomosNotLinked):
        mint_portal_link(bob)
    assert nomos.calls == {}


def test_anonymous_user_raises_not_linked(nomos: Any) -> None:
    from django.contrib.auth.models import AnonymousUser

    with pytest.raises(NomosNotLinked):
        mint_portal_link(AnonymousUser())
    with pytest.raises(NomosNotLinked):
        mint_portal_link(None)


def test_link_is_logged_by_customer_id_never_in_full(
    nomos: Any, alice: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    link = mint_portal_link(alice)
    token_hash = query(link)["token_hash"][0]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert seed.ALICE in text
    assert token_hash not in text


class FakeClient:
    def __init__(self, link: str) -> None:
        self.link = link

    def create_magic_link(self, customer_id: str) -> str:
        return self.link


@pytest.mark.parametrize(
    "link",
    [
        "https://evil.com/auth/confirm?token_hash=SECRETHASH&next=/overview",
        "http://brand.customerportal.energy/auth/confirm?token_hash=SECRETHASH",
        "https://customerportal.energy.evil.com/?token_hash=SECRETHASH",
        "javascript:alert(1)//token_hash=SECRETHASH",
        "http://127.0.0.1:8765/portal/auth/confirm?token_hash=SECRETHASH",
        "https://sandbox.customerportal.localhost/auth/confirm?token_hash=SECRETHASH",
    ],
)
def test_link_outside_the_portal_hosts_is_an_error_not_a_redirect(
    settings,
    alice: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    link: str,
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, **PRODUCTION}
    monkeypatch.setattr("nomos_billing.portal.get_client", lambda: FakeClient(link))
    caplog.set_level(logging.DEBUG)

    with pytest.raises(NomosAPIError) as info:
        mint_portal_link(alice)

    assert info.value.code == INVALID_LINK
    assert (info.value.method, info.value.path) == ("POST", "/admin/magic_link")
    assert "SECRETHASH" not in str(info.value)
    assert all("SECRETHASH" not in r.getMessage() for r in caplog.records)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(seed.ALICE in m and "not an allowed portal or checkout host" in m for m in errors)
    # Where it pointed, scheme and host only: enough to fix PORTAL_HOSTS, nothing of the token.
    parts = urlsplit(link)
    assert any(f"'{parts.scheme}://{parts.hostname}'" in m for m in errors)


@pytest.mark.parametrize(
    ("hosts", "link", "allowed"),
    [
        (None, "https://brand.customerportal.energy/auth/confirm?x=1", True),
        (None, "https://a.b.customerportal.energy/", True),
        (None, "https://BRAND.CustomerPortal.Energy/", True),
        (None, "https://brand.customerportal.energy:443/", True),
        (None, "https://brand.customerportal.energy:8443/", False),
        (None, "http://brand.customerportal.energy/", False),
        (None, "https://customerportal.energy.evil.com/", False),
        (None, "https://evilcustomerportal.energy/", False),
        (None, "https://user@brand.customerportal.energy/", False),
        (None, "https://evil.com\\@brand.customerportal.energy/", False),
        (None, "//brand.customerportal.energy/", False),
        (None, "https://brand.customerportal.energy /", False),
        (None, "https://127.0.0.1/", False),
        (None, "http://localhost:8000/", False),
        (["portal.example.com"], "https://portal.example.com/x", True),
        (["portal.example.com"], "https://sub.portal.example.com/x", False),
        (["portal.example.com"], "https://brand.customerportal.energy/", False),
        ([".example.com"], "https://sub.portal.example.com/x", True),
        ([".example.com"], "https://example.com.evil.org/x", False),
        # The hosted checkout: Nomos' answer for a customer without a subscription.
        (None, "https://lumio.checkout.energy/?token=t", True),
        (None, "http://lumio.checkout.energy/", False),
        (None, "https://lumio.checkout.energy:8443/", False),
        (None, "https://checkout.energy.evil.com/", False),
        (None, "https://evilcheckout.energy/", False),
        (["portal.example.com"], "https://lumio.checkout.energy/", True),
        # Plain http is refused outside a loopback sandbox API, even on a configured host.
        (["localhost"], "http://localhost/x", False),
        (["localhost"], "https://localhost/x", True),
    ],
)
def test_allowed_portal_hosts_against_the_production_api(
    settings, hosts: list[str] | None, link: str, allowed: bool
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, **PRODUCTION, "PORTAL_HOSTS": hosts}
    assert is_allowed_link(link) is allowed


@pytest.mark.parametrize(
    ("extra", "link", "allowed"),
    [
        ({"CHECKOUT_HOSTS": ["signup.example.com"]}, "https://signup.example.com/x", True),
        ({"CHECKOUT_HOSTS": ["signup.example.com"]}, "https://lumio.checkout.energy/", False),
        ({"CHECKOUT_URL": "https://join.example.org/plan/"}, "https://join.example.org/?a=1",
         True),
        ({"CHECKOUT_URL": "https://join.example.org/plan/"}, "https://lumio.checkout.energy/",
         True),
        ({"CHECKOUT_URL": "https://join.example.org/plan/"}, "http://join.example.org/", False),
        ({"CHECKOUT_URL": "https://join.example.org/plan/"}, "https://x.join.example.org/",
         False),
    ],
)
def test_checkout_hosts_are_configurable_and_follow_checkout_url(
    settings, extra: dict[str, Any], link: str, allowed: bool
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, **PRODUCTION, **extra}
    assert is_allowed_link(link) is allowed


def test_a_checkout_link_is_returned_without_next(
    settings, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, **PRODUCTION}
    link = "https://lumio.checkout.energy/start?token=abc"
    monkeypatch.setattr("nomos_billing.portal.get_client", lambda: FakeClient(link))
    assert mint_portal_link(alice, next="/invoices/inv_1") == link


SANDBOX_HOSTS = {"PORTAL_HOSTS": [".customerportal.localhost"],
                 "CHECKOUT_HOSTS": [".checkout.localhost"]}


@pytest.mark.parametrize(
    ("hosts", "link", "kind"),
    [
        # The sandbox's hosts, configured: http on its port is fine against a loopback API.
        (SANDBOX_HOSTS, "http://sandbox.customerportal.localhost:8765/auth/confirm", "portal"),
        (SANDBOX_HOSTS, "https://sandbox.customerportal.localhost:8443/auth/confirm", "portal"),
        (SANDBOX_HOSTS, "http://pln-x.checkout.localhost:8765/?token_hash=t", "checkout"),
        # The host decides, never the path: /checkout/ on a portal host is the portal, and a
        # /start on a checkout host the checkout.
        (SANDBOX_HOSTS, "http://sandbox.customerportal.localhost:8765/checkout/p/", "portal"),
        (SANDBOX_HOSTS, "http://pln-x.checkout.localhost:8765/portal/auth/confirm", "checkout"),
        # Loopback is no host of its own: not on the lists, not allowed.
        (SANDBOX_HOSTS, "http://127.0.0.1:8765/portal/auth/confirm", None),
        (SANDBOX_HOSTS, "http://localhost:8765/checkout/pln_x/", None),
        (SANDBOX_HOSTS, "http://[::1]:8765/portal/auth/confirm", None),
        (SANDBOX_HOSTS, "http://evil.localhost:8765/", None),
        (SANDBOX_HOSTS, "https://brand.customerportal.energy/", None),
        (SANDBOX_HOSTS, "ftp://sandbox.customerportal.localhost/", None),
        # The package's defaults: Nomos' domains only, whatever the API.
        ({"PORTAL_HOSTS": None, "CHECKOUT_HOSTS": None},
         "http://sandbox.customerportal.localhost:8765/auth/confirm", None),
        ({"PORTAL_HOSTS": None, "CHECKOUT_HOSTS": None},
         "http://pln-x.checkout.localhost:8765/", None),
        ({"PORTAL_HOSTS": None, "CHECKOUT_HOSTS": None},
         "http://brand.customerportal.energy:8765/auth/confirm", "portal"),
        ({"PORTAL_HOSTS": None, "CHECKOUT_HOSTS": None},
         "http://lumio.checkout.energy/start", "checkout"),
        ({"PORTAL_HOSTS": None, "CHECKOUT_HOSTS": None}, "http://127.0.0.1:8765/", None),
    ],
)
def test_a_loopback_sandbox_api_relaxes_the_scheme_and_never_the_hosts(
    settings, hosts: dict[str, Any], link: str, kind: str | None
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, **hosts,
                              "API_BASE_URL": "http://127.0.0.1:8765"}
    assert link_kind(link) == kind
    assert is_allowed_link(link) is (kind is not None)


@pytest.mark.parametrize(
    ("link", "kind"),
    [
        ("https://brand.customerportal.energy/auth/confirm", "portal"),
        ("https://lumio.checkout.energy/start", "checkout"),
        # The scheme is relaxed against a loopback API only.
        ("http://brand.customerportal.energy/auth/confirm", None),
        ("http://sandbox.customerportal.localhost:8765/auth/confirm", None),
    ],
)
def test_production_api_takes_https_only_on_the_same_host_lists(
    settings, link: str, kind: str | None
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, **PRODUCTION, **SANDBOX_HOSTS,
                              "PORTAL_HOSTS": [".customerportal.energy",
                                               ".customerportal.localhost"],
                              "CHECKOUT_HOSTS": [".checkout.energy", ".checkout.localhost"]}
    assert link_kind(link) == kind


def test_sandbox_mints_portal_and_checkout_links_on_distinct_hosts_classified_by_host(
    nomos: Any, alice: Any
) -> None:
    """The production branch under test: the sandbox's links are told apart by their hosts."""
    portal = nomos.mint_magic_link(seed.ALICE, nomos.base_url)
    checkout = nomos.mint_magic_link(seed.CAROL, nomos.base_url)  # no subscription
    lead = nomos.create_lead({"plan": "pln_x", "address": {"zip": "10115"},
                              "meter": {"estimated_usage": 2000}}, nomos.base_url)["link"]

    assert urlsplit(portal).hostname == "sandbox.customerportal.localhost"
    assert urlsplit(checkout).hostname == "pln-sandbox-home.checkout.localhost"
    assert urlsplit(lead).hostname == "pln-x.checkout.localhost"
    assert [link_kind(portal), link_kind(checkout), link_kind(lead)] == [
        "portal", "checkout", "checkout"]


def test_sandbox_links_are_refused_where_the_site_does_not_accept_its_hosts(
    nomos: Any, alice: Any, settings
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "PORTAL_HOSTS": None,
                              "CHECKOUT_HOSTS": None}
    with pytest.raises(NomosAPIError) as info:
        mint_portal_link(alice)
    assert info.value.code == INVALID_LINK
    assert nomos.count("POST /admin/magic_link") == 1


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        (
            "https://p.customerportal.energy/a?token_hash=ab%2Fc&type=magiclink&next=/overview",
            "https://p.customerportal.energy/a?token_hash=ab%2Fc&type=magiclink&next=/invoices/x",
        ),
        (
            "https://p.customerportal.energy/a?token_hash=t",
            "https://p.customerportal.energy/a?token_hash=t&next=/invoices/x",
        ),
        (
            "https://p.customerportal.energy/a?next=/one&token_hash=t&next=/two",
            "https://p.customerportal.energy/a?token_hash=t&next=/invoices/x",
        ),
        (
            "https://p.customerportal.energy/a?n%65xt=/one&token_hash=t",
            "https://p.customerportal.energy/a?token_hash=t&next=/invoices/x",
        ),
        # The name ends at the first "=": a value with "=" in it, or a bare "next", is a next.
        (
            "https://p.customerportal.energy/a?next=/a=b&token_hash=t&next",
            "https://p.customerportal.energy/a?token_hash=t&next=/invoices/x",
        ),
    ],
)
def test_with_next_replaces_every_next_and_keeps_other_bytes(link: str, expected: str) -> None:
    assert with_next(link, "/invoices/x") == expected


def test_sandbox_checkout_link_for_a_customer_without_subscription_never_gets_next(
    nomos: Any, django_user_model: Any
) -> None:
    carol = django_user_model.objects.create_user("carol", "carol@example.com", "pw")
    NomosCustomer.objects.create(user=carol, customer_id=seed.CAROL, email="carol@example.com")

    link = mint_portal_link(carol, next="/invoices/inv_1")

    assert link.startswith(nomos.checkout_origin() + "/?token_hash=")
    assert "next" not in query(link)
    # The link works where a browser would take it: the checkout for carol.
    page = requests.get(link, timeout=5)
    assert page.status_code == 200 and 'value="carol@example.com"' in page.text


@pytest.mark.parametrize(("link", "allowed"), [
    ("https://a.example.com/x", True),
    ("http://a.example.com/x", False),
    ("https://brand.customerportal.energy/", False),
])
def test_hosts_set_replace_the_default_lists(settings, link: str, allowed: bool) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, **PRODUCTION,
                              "PORTAL_HOSTS": [".example.com"], "CHECKOUT_HOSTS": [".example.com"]}
    assert is_allowed_link(link) is allowed
