"""Linking by hand in a real browser: Debian's Chromium driven by Playwright, the admin on
pytest-django's live server with Django's own admin static files.

An operator ticks an unlinked customer, picks *Link to a user…*, types part of a user name
into the autocomplete, chooses the user it finds and links: the customer row names that user
and the admin says so. The screenshot of the open search goes to
``artifacts/browser-admin-link-autocomplete.png``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import django
import pytest

from nomos_billing.models import NomosCustomer
from tests.browser.test_browser import ARTIFACTS, CHROMIUM, browser  # noqa: F401 - the fixture

pytestmark = [
    pytest.mark.browser,
    pytest.mark.live,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)),
                       reason=f"Chromium not found at {CHROMIUM} (apt-get install chromium)"),
]


@pytest.fixture
def admin_static(settings: Any) -> None:
    # The live server serves STATIC_ROOT (the test settings have no staticfiles app): point it
    # at Django's admin files, which hold select2 and the autocomplete script.
    settings.STATIC_ROOT = str(Path(django.__file__).parent / "contrib" / "admin" / "static")


def test_an_operator_links_a_customer_by_searching_the_user(
    browser: Any,  # noqa: F811 - the imported fixture
    live_server: Any, admin_static: None, django_user_model: Any,
) -> None:
    django_user_model.objects.create_superuser("operator", "op@example.com", "op-pw")
    target = django_user_model.objects.create_user("vera.target", "vera@example.com", "pw")
    django_user_model.objects.create_user("someone.else", "else@example.com", "pw")
    customer = NomosCustomer.objects.create(customer_id="cus_by_hand", email="vera@example.com")

    page = browser.new_page(viewport={"width": 1200, "height": 800})
    try:
        base = live_server.url
        page.goto(base + "/admin/login/?next=/admin/nomos_billing/nomoscustomer/")
        page.fill("#id_username", "operator")
        page.fill("#id_password", "op-pw")
        page.click("input[type=submit]")
        page.wait_for_url(base + "/admin/nomos_billing/nomoscustomer/")

        page.check(f"input[name=_selected_action][value='{customer.pk}']")
        page.select_option("select[name=action]", "link_to_user")
        page.click("button[name=index]")
        page.wait_for_selector("text=Link a Nomos customer to a user")

        # select2 replaces the <select>: open it, type, wait for the server's answer.
        page.click(".select2-selection")
        page.fill(".select2-search__field", "vera")
        # The search narrows the list to the one user whose fields hold "vera".
        expect = pytest.importorskip("playwright.sync_api").expect
        expect(page.locator(".select2-results__option")).to_have_count(1, timeout=10_000)
        option = page.locator(".select2-results__option", has_text="vera.target")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-admin-link-autocomplete.png"),
                        full_page=True)
        option.click()
        page.click("input[name=apply]")

        page.wait_for_selector(".messagelist .success")
        assert "Linked cus_by_hand to vera.target." in page.inner_text(".messagelist")
    finally:
        page.close()

    customer.refresh_from_db()
    assert (customer.user, customer.linked_by) == (target, "admin")
