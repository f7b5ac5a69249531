"""The documentation's reference pages against the code they describe.

The settings and checks pages are generated from ``nomos_billing.settings_table`` and
``nomos_billing/checks.py`` when the docs are built (``docs/_ext/nomos_reference.py``); these
tests read the code independently of that generator and demand that every key and every check
id appears in what it generates, and in the built HTML.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from nomos_billing.conf import DEFAULTS

pytest.importorskip("sphinx", reason="the docs extra (sphinx, furo, myst-parser) is not installed")

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import nomos_reference  # noqa: E402


def defined_check_ids() -> set[str]:
    """Every id string of the checks and the settings table, found by a plain search rather
    than the generator's parser."""
    package = ROOT / "nomos_billing"
    sources = [*package.glob("checks*.py"), package / "settings_table.py"]
    text = "".join(p.read_text() for p in sources)
    return set(re.findall(r'"(nomos_billing\.[EW]\d{3})"', text))


def table_keys(page: str) -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", page, re.M))


def test_the_settings_reference_lists_every_key_with_the_codes_default() -> None:
    page = nomos_reference.settings_page()
    assert table_keys(page) == set(DEFAULTS)
    for key, default in DEFAULTS.items():
        assert f"| `{key}` |" in page and f"`{default!r}`" in page


def test_the_checks_reference_lists_every_check_id_the_code_defines() -> None:
    ids = defined_check_ids()
    assert len(ids) > 30  # a floor: an empty search would prove nothing
    page = nomos_reference.checks_page()
    assert table_keys(page) == ids
    for row in page.splitlines()[2:]:
        said = row.split(" | ")[2]
        assert said.strip(), f"no message for {row}"


def test_the_built_reference_pages_name_every_key_and_id(tmp_path: Path) -> None:
    out = tmp_path / "html"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(DOCS),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    settings_html = (out / "reference/settings.html").read_text()
    checks_html = (out / "reference/checks.html").read_text()
    for key in DEFAULTS:
        assert f'<span class="pre">{key}</span>' in settings_html, key
    for check_id in defined_check_ids():
        assert f'<span class="pre">{check_id}</span>' in checks_html, check_id
