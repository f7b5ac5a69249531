"""Guard: a link Nomos hands us is followed only on an allowed host, on every path that
redirects to one: the portal button (GET and POST), the JSON endpoint for apps, and the lead
form's redirect to the hosted checkout.

The sandbox answers over HTTP as Nomos would, once with its own links (its ``*.localhost``
portal and checkout hosts) and once with links on look-alike hosts; the second must never
become a ``Location`` or a JSON ``url``, and the lead it came with is not kept.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
from django.test import Client

from nomos_billing.models import NomosCustomer, NomosLead
from nomos_billing.sandbox import accounts as sandbox_accounts
from nomos_billing.sandbox import links as sandbox_links
from nomos_billing.sandbox import seed

pytestmark = pytest.mark.django_db

PORTAL_ELSEWHERE = "https://brand.customerportal.energy.evil.com"
CHECKOUT_ELSEWHERE = "https://home.checkout.energy.evil.com"


@pytest.fixture
def users(nomos: Any, django_user_model: Any, settings: Any) -> dict[str, Any]:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "PLAN_ID": "pln_sandbox_home"}
    linked = django_user_model.objects.create_user("linked", "alice@example.com", "pw")
    NomosCustomer.objects.create(customer_id=seed.ALICE, email="alice@example.com", user=linked)
    newcomer = django_user_model.objects.create_user("new", "new@example.com", "pw")
    return {"linked": linked, "newcomer": newcomer}


@pytest.fixture(params=["sandbox", "elsewhere"])
def links(request: Any, nomos: Any, monkeypatch: Any) -> str:
    """Where the sandbox's links point: its own loopback host, or look-alike hosts."""
    if request.param == "elsewhere":
        monkeypatch.setattr(
            nomos, "mint_magic_link",
            lambda customer_id, base_url: f"{PORTAL_ELSEWHERE}/auth/confirm?token_hash=x"
            "&type=magiclink&next=/overview")
        # Both of the sandbox's link makers (a lead's checkout, a magic link without a
        # subscription) import the one builder by name.
        for module in (sandbox_accounts, sandbox_links):
            monkeypatch.setattr(
                module, "checkout_url",
                lambda base_url, plan, **params: f"{CHECKOUT_ELSEWHERE}/?{urlencode(params)}")
    return str(request.param)


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def followed(response: Any) -> str | None:
    """The link the answer sends the browser or the app to, if any."""
    if response.status_code in (301, 302, 303, 307, 308):
        return str(response["Location"])
    if response.get("Content-Type", "").startswith("application/json"):
        return response.json().get("url")
    return None


PATHS = {
    "portal GET": ("linked", lambda c: c.get("/nomos/portal/")),
    "portal POST": ("linked", lambda c: c.post("/nomos/portal/")),
    "portal/link": ("linked", lambda c: c.post("/nomos/portal/link/", "{}",
                                               content_type="application/json")),
    "portal/start": ("newcomer", lambda c: c.post(
        "/nomos/portal/start/", {"zip_code": "10115", "estimated_usage": "2500"})),
}


@pytest.mark.parametrize("path", PATHS)
def test_only_links_on_allowed_hosts_are_followed(path, links, users, nomos):
    who, send = PATHS[path]
    response = send(signed_in(users[who]))
    link = followed(response)
    if links == "sandbox":
        # The sandbox's own portal and checkout hosts (*.localhost), which the test settings
        # allow as a site allows Nomos' domains.
        own = (nomos.portal_origin, nomos.checkout_origin("pln_sandbox_home"))
        assert link is not None and link.startswith(own), (path, response.status_code, link)
    else:
        assert link is None, (path, link)
        assert response.status_code == 503
        assert b"evil" not in response.content
        assert not NomosLead.objects.exists()
