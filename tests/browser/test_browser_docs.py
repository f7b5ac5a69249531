"""The documentation as a reader sees it: the built site in Debian's Chromium, its front page and
the settings reference, each screenshotted to ``artifacts/browser-docs-*.png``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nomos_billing.conf import DEFAULTS
from tests.browser.test_browser import CHROMIUM, browser, screenshot  # noqa: F401 - the fixture

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists() and not __import__("shutil").which(CHROMIUM),
                       reason=f"Chromium not found at {CHROMIUM} (apt-get install chromium)"),
]

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def site(tmp_path_factory: Any) -> Path:
    pytest.importorskip("sphinx", reason="the docs extra (sphinx, furo, myst-parser) is not "
                                         "installed")
    out = tmp_path_factory.mktemp("docs") / "html"
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert build.returncode == 0, build.stderr
    return out


def test_the_front_page_leads_to_each_part(browser: Any, site: Path) -> None:  # noqa: F811
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto((site / "index.html").as_uri())
        assert page.locator("h1").first.inner_text().startswith("nomos-billing")
        links = page.locator("a").all_inner_texts()
        for part in ("Tutorial", "Settings", "System checks", "Process webhooks on a task worker"):
            assert any(part in text for text in links), part
        screenshot(page, "docs-front")
        page.get_by_role("link", name="Settings").first.click()
        page.wait_for_load_state()
        assert page.url.endswith("reference/settings.html")
    finally:
        page.close()


def test_the_settings_reference_shows_every_key(browser: Any, site: Path) -> None:  # noqa: F811
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto((site / "reference" / "settings.html").as_uri())
        text = page.locator("body").inner_text()
        missing = [key for key in DEFAULTS if key not in text]
        assert missing == []
        screenshot(page, "docs-settings")
    finally:
        page.close()
