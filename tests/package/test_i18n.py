"""German ships compiled: every msgid of the package is translated in ``locale/de`` (the .po is
complete and current, the .mo matches it), placeholders survive, and the pages, the JSON errors,
the form and the model names render in German."""

from __future__ import annotations

import ast
import gettext
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import translation

import nomos_billing
from nomos_billing.models import NomosCustomer
from nomos_billing.sandbox import Fault, seed

PACKAGE = Path(nomos_billing.__file__).resolve().parent
PO = PACKAGE / "locale" / "de" / "LC_MESSAGES" / "django.po"
MO = PO.with_suffix(".mo")
PLACEHOLDER = re.compile(r"%\(\w+\)[sd]|\{\w*\}")


def parse_po(path: Path) -> dict[str, dict[str, Any]]:
    """msgid -> {"msgstr": [..], "fuzzy": bool}; enough of the format for makemessages output."""
    entries: dict[str, dict[str, Any]] = {}
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        fields: dict[str, str] = {}
        current = None
        fuzzy = False
        for line in block.splitlines():
            if line.startswith("#,") and "fuzzy" in line:
                fuzzy = True
            if line.startswith("#") or not line.strip():
                continue
            if line.startswith('"'):
                fields[current] += ast.literal_eval(line)  # type: ignore[index]
            else:
                current, _, rest = line.partition(" ")
                fields[current] = ast.literal_eval(rest)
        if fields.get("msgid"):
            strs = [v for k, v in sorted(fields.items()) if k.startswith("msgstr")]
            entries[fields["msgid"]] = {
                "msgstr": strs,
                "fuzzy": fuzzy,
                "plural": fields.get("msgid_plural"),
            }
    return entries


def test_every_entry_is_translated_and_not_fuzzy() -> None:
    entries = parse_po(PO)
    assert len(entries) > 50
    untranslated = [m for m, e in entries.items() if e["fuzzy"] or not all(e["msgstr"])]
    assert untranslated == []


def test_placeholders_survive_translation() -> None:
    for msgid, entry in parse_po(PO).items():
        for msgstr in entry["msgstr"]:
            assert sorted(PLACEHOLDER.findall(msgstr)) == sorted(PLACEHOLDER.findall(msgid)), msgid


def test_compiled_catalog_matches_the_po() -> None:
    with MO.open("rb") as fp:
        catalog = gettext.GNUTranslations(fp)
    for msgid, entry in parse_po(PO).items():
        if entry["plural"]:
            assert catalog.ngettext(msgid, entry["plural"], 1) == entry["msgstr"][0]
            assert catalog.ngettext(msgid, entry["plural"], 5) == entry["msgstr"][1]
        else:
            assert catalog.gettext(msgid) == entry["msgstr"][0], msgid


@pytest.mark.skipif(shutil.which("xgettext") is None, reason="gettext is not installed")
def test_po_contains_every_string_the_package_marks(tmp_path: Path) -> None:
    copy = tmp_path / "nomos_billing"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.mo"))
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    subprocess.run(
        [sys.executable, "-m", "django", "makemessages", "-l", "de", "--no-location"],
        cwd=copy,
        env=env,
        check=True,
        capture_output=True,
    )
    fresh = parse_po(copy / "locale" / "de" / "LC_MESSAGES" / "django.po")
    assert set(fresh) == set(parse_po(PO))
    new_or_fuzzy = [m for m, e in fresh.items() if e["fuzzy"] or not all(e["msgstr"])]
    assert new_or_fuzzy == []


# -- rendering in German -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _back_to_the_default_language() -> Any:
    # LocaleMiddleware leaves the last request's language active in this thread.
    yield
    translation.deactivate()


@pytest.fixture
def german(settings: Any) -> None:
    settings.LANGUAGE_CODE = "de"


@pytest.mark.django_db
def test_friendly_page_and_form_render_in_german(
    client: Client, django_user_model: Any, nomos: Any, settings: Any, german: None
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "PLAN_ID": "pln_sandbox_home"}
    client.force_login(django_user_model.objects.create_user("bob", "bob@example.com", "pw"))

    html = client.get("/nomos/portal/").content.decode()

    assert '<html lang="de">' in html
    assert "<h1>Noch kein Stromvertrag</h1>" in html
    assert "Postleitzahl" in html and "Geschätzter Jahresverbrauch (kWh)" in html
    assert "Weiter zum Abschluss" in html
    bad = client.post("/nomos/portal/start/", {"zip_code": "1", "estimated_usage": "2500"})
    assert "Geben Sie eine deutsche Postleitzahl mit 5 Ziffern ein." in bad.content.decode()
    refused = client.post("/nomos/portal/start/", {"zip_code": "00000", "estimated_usage": "2500"})
    assert refused.status_code == 200
    assert "An diese Postleitzahl können wir noch keinen Strom liefern." in refused.content.decode()


@pytest.mark.django_db
def test_unavailable_page_and_json_errors_render_in_german(
    client: Client, django_user_model: Any, nomos: Any, german: None
) -> None:
    user = django_user_model.objects.create_user("alice", "alice@example.com", "pw")
    NomosCustomer.objects.create(user=user, customer_id=seed.ALICE)
    client.force_login(user)
    nomos.add_fault("POST /admin/magic_link", Fault(status=500), times=None)

    page = client.get("/nomos/portal/")
    assert page.status_code == 503
    assert "Das Kundenportal ist gerade nicht erreichbar" in page.content.decode()
    data = client.post("/nomos/portal/link/").json()
    assert data == {
        "code": "unavailable",
        "error": "Das Kundenportal ist gerade nicht "
        "erreichbar. Bitte versuchen Sie es in ein paar Minuten erneut.",
    }


@pytest.mark.django_db
def test_browser_language_header_selects_german(client: Client, nomos: Any) -> None:
    response = client.post("/nomos/portal/link/", headers={"Accept-Language": "de-DE,de;q=0.9"})
    assert response.json()["error"] == "Bitte melden Sie sich zuerst an."


def test_model_names_are_german() -> None:
    with translation.override("de"):
        assert str(NomosCustomer._meta.verbose_name) == "Nomos-Kunde"
        assert (
            str(NomosCustomer._meta.get_field("customer_id").verbose_name) == "Nomos-Kundennummer"
        )
