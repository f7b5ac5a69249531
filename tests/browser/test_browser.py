"""The portal button in a real browser: Debian's Chromium driven by Playwright (no browser
download), the site on pytest-django's live server, the sandbox on loopback.

A linked user logs in through the form, clicks the button and lands on the sandbox portal signed
in as their customer, on the page the button asked for; an unlinked user gets the friendly page;
with a German browser the button speaks German. Screenshots go to ``artifacts/browser-*.png``.

This module is also the URLconf of its tests (``pytest.mark.urls``): a home page that renders
the button the way a site's template would, and a login form.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import forms as auth_forms
from django.contrib.auth import login as auth_login
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template import RequestContext, Template
from django.urls import include, path
from django.views.decorators.csrf import csrf_protect

from nomos_billing.sandbox import seed

CHROMIUM = os.environ.get("NOMOS_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.live,
    pytest.mark.urls(__name__),
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)),
                       reason=f"Chromium not found at {CHROMIUM} (apt-get install chromium)"),
]

# -- the pages under test ---------------------------------------------------------------------

HOME = (
    "{% load nomos_billing %}<!doctype html><html><body>"
    "<p id='who'>{{ user.get_username }}</p>"
    "{% nomos_portal_button next='/invoices' %}"
    "</body></html>"
)
LOGIN = (
    "<!doctype html><html><body><form method='post'>{% csrf_token %}{{ form.as_p }}"
    "<button id='login' type='submit'>Log in</button></form></body></html>"
)


def home(request: HttpRequest) -> HttpResponse:
    # Compiled per request: a missing tag library fails this test, not the collection.
    return HttpResponse(Template(HOME).render(RequestContext(request)))


@csrf_protect
def login(request: HttpRequest) -> HttpResponse:
    form = auth_forms.AuthenticationForm(request, data=request.POST or None)
    if request.method == "POST" and form.is_valid():
        auth_login(request, form.get_user())
        return HttpResponseRedirect("/")
    return HttpResponse(Template(LOGIN).render(RequestContext(request, {"form": form})))


urlpatterns = [
    # "home" and set_language: the example project's layout links to both.
    path("", home, name="home"),
    path("accounts/login/", login, name="login"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("nomos/", include("nomos_billing.urls")),
]

# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[browser]')"
    )
    # Playwright's sync API runs an event loop in this thread, and Django refuses ORM calls
    # from a thread with a running loop; the ORM use here (fixtures, teardown) is synchronous.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_api.sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def people(nomos, django_user_model) -> dict[str, Any]:
    from nomos_billing.models import NomosCustomer

    alice = django_user_model.objects.create_user("alice", "alice@example.com", "alice-pw")
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "bob-pw")
    NomosCustomer.objects.create(customer_id=seed.ALICE, email="alice@example.com", user=alice,
                                 first_name="Alice", last_name="Example")
    return {"alice": alice, "bob": bob}


def log_in(page: Any, base_url: str, username: str, password: str) -> None:
    page.goto(base_url + "/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("#login")
    page.wait_for_url(base_url + "/")
    assert page.inner_text("#who") == username


def portal_button(page: Any) -> Any:
    return page.locator("a[href*='/nomos/portal/'], form[action*='/nomos/portal/'] button").first


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / f"browser-{name}.png"
    page.screenshot(path=str(target), full_page=True)
    return target


# -- tests ------------------------------------------------------------------------------------


def test_linked_user_clicks_the_button_and_lands_on_the_portal_as_their_customer(
    browser: Any, live_server: Any, people: dict[str, Any], nomos: Any
) -> None:
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    try:
        log_in(page, live_server.url, "alice", "alice-pw")
        portal_button(page).click()
        page.wait_for_url(nomos.portal_origin + "/auth/confirm**")

        assert page.inner_text("#customer-id") == seed.ALICE
        assert page.inner_text("#next-page") == "/invoices"
        assert list(nomos.portal_sessions) == [{"customer_id": seed.ALICE, "next": "/invoices"}]
        assert screenshot(page, "portal").stat().st_size > 1000
        # The token that minted the link never reached the browser.
        assert "token_hash" in page.url and "sbx_at_" not in page.url
    finally:
        context.close()


def test_unlinked_user_gets_the_friendly_page_and_no_link_is_minted(
    browser: Any, live_server: Any, people: dict[str, Any], nomos: Any
) -> None:
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    try:
        log_in(page, live_server.url, "bob", "bob-pw")
        with page.expect_navigation() as navigation:
            portal_button(page).click()

        # The friendly page itself: 200 at the button's own URL (no redirect to a login or
        # error page), with its heading and words; a 403/404 or any other page fails here.
        assert navigation.value.status == 200
        assert page.url == live_server.url + "/nomos/portal/?next=/invoices"
        assert page.title() == "No electricity contract yet"
        assert page.inner_text("h1") == "No electricity contract yet"
        assert "not linked to a customer account yet" in page.inner_text(".nomos-no-customer")
        assert nomos.calls == {}
        screenshot(page, "not-linked")
    finally:
        context.close()


def test_german_browser_sees_the_german_button_label(
    browser: Any, live_server: Any, people: dict[str, Any], nomos: Any
) -> None:
    english = browser.new_context(locale="en-US")
    german = browser.new_context(locale="de-DE")
    try:
        labels = {}
        for lang, context in (("en", english), ("de", german)):
            page = context.new_page()
            log_in(page, live_server.url, "alice", "alice-pw")
            labels[lang] = portal_button(page).inner_text().strip()
            if lang == "de":
                screenshot(page, "home-de")

        from django.utils import translation

        with translation.override("de"):
            expected = translation.gettext(labels["en"])
        assert labels["de"] == expected
        assert labels["de"] != labels["en"], "the button label is not translated to German"
    finally:
        english.close()
        german.close()


# -- our own pages, in both layouts -----------------------------------------------------------

EXAMPLE_TEMPLATES = Path(__file__).resolve().parents[2] / "example_project" / "demo_app" \
    / "templates"


@pytest.fixture(params=["default", "example"])
def layout(request: pytest.FixtureRequest, settings: Any) -> str:
    """``default``: our own layout.html; ``example``: the example project's override of
    nomos_billing/base.html, found first through DIRS as a site's templates are."""
    if request.param == "example":
        settings.TEMPLATES = [{**settings.TEMPLATES[0],
                               "DIRS": [EXAMPLE_TEMPLATES, *settings.TEMPLATES[0]["DIRS"]]}]
    return request.param


@pytest.mark.parametrize("lang", ["en", "de"])
def test_each_page_ships_in_the_layout_with_a_visible_way_back(
    browser: Any, live_server: Any, people: dict[str, Any], nomos: Any, settings: Any,
    layout: str, lang: str,
) -> None:
    from nomos_billing.models import NomosCustomer
    from nomos_billing.sandbox import Fault

    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "PLAN_ID": "pln_sandbox_home"}
    nomos.add_fault("POST /admin/magic_link", Fault(status=500), times=None)
    context = browser.new_context(locale="de-DE" if lang == "de" else "en-US",
                                  viewport={"width": 390, "height": 760})
    page = context.new_page()
    try:
        log_in(page, live_server.url, "bob", "bob-pw")
        visits = [("start", "/nomos/portal/start/", 200),
                  ("no-customer", "/nomos/portal/", 200),
                  ("unavailable", "/nomos/portal/", 503)]
        for name, path_, status in visits:
            if name == "unavailable":
                # Bob becomes a customer, and Nomos fails to mint his link.
                NomosCustomer.objects.create(customer_id=seed.CAROL, user=people["bob"])
            response = page.goto(live_server.url + path_)
            assert response.status == status, (name, response.status)
            assert page.locator("html").get_attribute("lang") == lang
            assert page.locator(f".nomos-billing.nomos-{name}").is_visible(), name
            back = page.locator("a[href='/']").first
            assert back.is_visible(), f"{name} ({layout}, {lang}) has no visible way back"
            # The example's own header (its home link), or our layout's "back" link.
            own = "header strong a" if layout == "example" else "header a.nomos-back"
            assert page.locator(own).is_visible(), (name, layout)
            screenshot(page, f"page-{layout}-{name}-{lang}")
    finally:
        context.close()
