"""``make demo`` in a real browser: bob signs up end to end, with no command typed.

The demo runs as a developer runs it (``example_project/demo.py`` in its own process, on its own
SQLite file); Debian's Chromium driven by Playwright does what bob does: log in, open the
sign-up form, send it, sign up on the sandbox's hosted checkout, come back to the site, press
the portal button and land on the sandbox portal as his new customer. Nothing links him but the
``subscription.created`` the sandbox forwards to the site's webhook by itself. A rerun of the
demo on the same database shows the same state (the sandbox keeps its data in a state file).
Screenshots go to ``artifacts/browser-demo-*.png``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.browser.test_browser import CHROMIUM, browser, screenshot  # noqa: F401 - the fixture
from tests.package.test_example_project import Demo

pytestmark = [
    pytest.mark.browser,
    pytest.mark.live,
    pytest.mark.skipif(not Path(CHROMIUM).exists() and not __import__("shutil").which(CHROMIUM),
                       reason=f"Chromium not found at {CHROMIUM} (apt-get install chromium)"),
]


def log_in(page: Any, demo: Demo, username: str, password: str) -> None:
    page.goto(demo.url + "/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("#login-submit")
    page.wait_for_url(demo.url + "/")
    assert page.inner_text("#username") == username


def wait_for_delivery(sandbox_url: str, topic: str) -> dict[str, Any]:
    """The sandbox's own record of the forwarded event being acknowledged by the site."""
    for _ in range(300):
        records = requests.get(f"{sandbox_url}/_sandbox/deliveries", timeout=5).json()
        done = [d for d in records["deliveries"]
                if d["forwarded"] and d["topic"] == topic and d["status"] == 200]
        if done:
            return done[0]
        time.sleep(0.1)
    pytest.fail(f"{topic} was not acknowledged by the site: {records}")


def test_bob_signs_up_through_the_sandbox_checkout_and_reaches_his_portal(
    browser: Any, tmp_path: Path  # noqa: F811 - the imported fixture
) -> None:
    db = tmp_path / "demo.sqlite3"
    demo = Demo(db)
    demo.wait_ready()
    sandbox_url = f"http://127.0.0.1:{demo.sandbox_port}"
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    try:
        checkout_url = f"http://pln-sandbox-home.checkout.localhost:{demo.sandbox_port}/"
        portal_url = f"http://sandbox.customerportal.localhost:{demo.sandbox_port}/auth/confirm"
        assert checkout_url in demo.output
        log_in(page, demo, "bob", "bob-demo")
        assert page.locator("#not-linked").count() == 1

        page.click("a[href='/nomos/portal/start/']")
        page.fill("input[name=zip_code]", "10115")
        page.fill("input[name=estimated_usage]", "3100")
        page.click("form[action='/nomos/portal/start/'] button[type=submit]")

        # The sandbox's hosted checkout, pre-filled from the lead the site created.
        checkout = re.escape(checkout_url) + r"\?id=lead_"
        page.wait_for_url(re.compile(checkout))
        assert page.input_value("#email") == "bob@example.com"
        assert page.input_value("#zip") == "10115" and page.input_value("#usage") == "3100"
        page.fill("#first_name", "Bob")
        page.fill("#last_name", "Builder")
        screenshot(page, "demo-checkout")
        page.click("#checkout-submit")

        # Back on the site (the plan's return URL); the webhook links bob by his lead. Whether
        # it has arrived yet or not, the page never says "not linked" beside the portal button.
        page.wait_for_url(demo.url + "/")
        assert page.locator("#not-linked").count() == 0, page.content()
        if page.locator("#customer-id").count() == 0:
            assert "Your sign-up is on its way" in page.inner_text("#checkout-pending")
            assert page.locator("form[action='/nomos/portal/'] button").count() == 1
        delivery = wait_for_delivery(sandbox_url, "subscription.created")
        state = requests.get(f"{sandbox_url}/_sandbox/state", timeout=5).json()
        event = state["events"][delivery["event_id"]]
        sub_id = event["context"]["subscription"]
        customer_id = state["subscriptions"][sub_id]["customer"]["id"]
        assert event["context"]["lead"].startswith("lead_")
        page.reload()
        assert page.inner_text("#customer-id") == customer_id
        assert sub_id in page.inner_text("#subscriptions")
        screenshot(page, "demo-bob-linked")

        page.locator("form[action*='/nomos/portal/'] button").first.click()
        page.wait_for_url(portal_url + "**")
        assert page.inner_text("#customer-id") == customer_id
        screenshot(page, "demo-bob-portal")
    finally:
        context.close()
        assert demo.stop() == 0

    # A rerun on the same database: the sandbox comes back with bob's customer, so his page
    # and his portal agree.
    again = Demo(db)
    again.wait_ready()
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    try:
        assert "(loaded;" in again.output
        log_in(page, again, "bob", "bob-demo")
        assert page.inner_text("#customer-id") == customer_id
        assert sub_id in page.inner_text("#subscriptions")
        page.locator("form[action*='/nomos/portal/'] button").first.click()
        page.wait_for_url(
            f"http://sandbox.customerportal.localhost:{again.sandbox_port}/auth/confirm**")
        assert page.inner_text("#customer-id") == customer_id
    finally:
        context.close()
        assert again.stop() == 0
