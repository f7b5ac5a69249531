"""The package's own pages (start, no customer, unavailable) as a site ships them: inside the
site's layout (``BASE_TEMPLATE``) or our small default one, always with a way back."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from nomos_billing.models import NomosCustomer
from nomos_billing.sandbox import Fault, seed

pytestmark = pytest.mark.django_db

PORTAL = "/nomos/portal/"
START = "/nomos/portal/start/"


@pytest.fixture
def bob(client: Client, django_user_model: Any) -> Client:
    client.force_login(django_user_model.objects.create_user("bob", "bob@example.com", "pw"))
    return client


def _pages(client: Client, users: Any, nomos: Any, settings: Any, lang: str) -> dict[str, Any]:
    """Each page once: start (PLAN_ID set), no customer, unavailable (Nomos answers 500)."""
    bob = users.objects.create_user("bob", "bob@example.com", "pw")
    alice = users.objects.create_user("alice", "alice@example.com", "pw")
    NomosCustomer.objects.create(user=alice, customer_id=seed.ALICE)
    nomos.add_fault("POST /admin/magic_link", Fault(status=500), times=None)
    headers = {"HTTP_ACCEPT_LANGUAGE": lang}
    client.force_login(bob)
    pages = {"no_customer": client.get(PORTAL, **headers)}
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "PLAN_ID": "pln_sandbox_home"}
    pages["start"] = client.get(START, **headers)
    client.force_login(alice)
    pages["unavailable"] = client.get(PORTAL, **headers)
    return pages


@pytest.mark.parametrize(("lang", "back"), [("en", "Back to the site"),
                                            ("de", "Zurück zur Website")])
def test_default_layout_is_a_small_accessible_page_with_a_way_back(
    client: Client, django_user_model: Any, nomos: Any, settings: Any, lang: str, back: str
) -> None:
    for name, response in _pages(client, django_user_model, nomos, settings, lang).items():
        html = response.content.decode()
        assert response.status_code == (503 if name == "unavailable" else 200), name
        assert f'<html lang="{lang}"' in html, name
        assert 'name="viewport"' in html and "system-ui" in html and "max-width" in html
        assert re.search(rf'<a class="nomos-back" href="/">&larr; {back}</a>', html), html


def test_back_link_follows_login_redirect_url(bob: Client, settings: Any) -> None:
    settings.LOGIN_REDIRECT_URL = "/account/overview/"
    html = bob.get(PORTAL).content.decode()
    assert 'class="nomos-back" href="/account/overview/"' in html


def test_base_template_puts_the_pages_into_the_sites_layout(
    bob: Client, settings: Any
) -> None:
    # The admin's base_site.html stands in for a site's base.html: it has a content block.
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "BASE_TEMPLATE": "admin/base_site.html"}
    response = bob.get(PORTAL)
    html = response.content.decode()
    assert response.status_code == 200
    assert "Django administration" in html  # the site's header
    assert "<h1>No electricity contract yet</h1>" in html  # our page, in its content block
    assert "nomos-layout-header" not in html  # not our own layout
    assert [t.name for t in response.templates][:3] == [
        "nomos_billing/no_customer.html", "nomos_billing/base.html", "admin/base_site.html"]
