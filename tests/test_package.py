"""The release: migrations in sync, and the built wheel works in a brand-new project.

``test_wheel_installs_into_a_new_project_and_receives_a_webhook`` copies the source tree,
runs ``python -m build`` (sdist, then the wheel from the sdist), installs the wheel into a
fresh virtualenv (pip takes Django and requests from the package index), creates a project with
``django-admin startproject``, adds the app exactly as the README says, and runs ``check``,
``migrate`` and one signed webhook through Django's test client.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", ".nox", ".tox", "build", "dist", "artifacts", "__pycache__",
             ".pytest_cache", ".ruff_cache", ".mypy_cache", "node_modules"}


@pytest.mark.django_db
def test_models_and_migrations_are_in_sync() -> None:
    # Exits with SystemExit(1) when a model change has no migration.
    call_command("makemigrations", "nomos_billing", "--check", "--dry-run", verbosity=0)


def _nox_matrix() -> list[tuple[str, str]]:
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "MATRIX":
            return ast.literal_eval(node.value)
    raise AssertionError("noxfile.py has no MATRIX")


def _ignore(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in SKIP_DIRS or n.endswith((".egg-info", ".sqlite3"))
            or n.startswith(".venv") or n == ".env"}


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 300, stderr: bool = False) -> str:
    """stdout of a command that must succeed (stdout + stderr with ``stderr=True``)."""
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout + result.stderr if stderr else result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("build")
    work = tmp_path_factory.mktemp("package")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=_ignore)
    out = work / "dist"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DJANGO_", "PYTHONDEV", "PYTHONDONTWRITEBYTECODE"))}
    # PYTHONWARNINGS reaches the isolated build backend too (-W would stop at the frontend):
    # a setuptools deprecation fails the build instead of scrolling past.
    env["PYTHONWARNINGS"] = "error"
    output = _run(sys.executable, "-m", "build", "--outdir", out, ".", cwd=source, env=env,
                  timeout=600, stderr=True)
    (work / "build.log").write_text(output)
    return out


@pytest.mark.slow
def test_build_prints_no_warning(dist: Path) -> None:
    # setuptools' own notices ("warning: no previously-included files ...", "Package ... is
    # absent from the packages configuration") are log lines, not Python warnings.
    log = (dist.parent / "build.log").read_text()
    noisy = [line for line in log.splitlines() if "warning" in line.lower()]
    assert not noisy, "\n".join(noisy)


@pytest.mark.slow
def test_sdist_and_wheel_ship_migrations_templates_locale_and_py_typed(dist: Path) -> None:
    [wheel] = dist.glob("*.whl")
    [sdist] = dist.glob("*.tar.gz")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "nomos_billing/py.typed",
        "nomos_billing/templates/nomos_billing/base.html",
        "nomos_billing/migrations/0001_initial.py",
        "nomos_billing/locale/de/LC_MESSAGES/django.mo",
        "nomos_billing/sandbox/__main__.py",
        "nomos_billing/management/commands/nomos_sync.py",
    ):
        assert required in names, f"{required} missing from {wheel.name}"
    assert any(n.startswith("nomos_billing/templates/nomos_billing/") and n.endswith(".html")
               for n in names)
    assert not any(n.startswith(("tests/", "example_project/", "bench/")) for n in names)
    assert not any("__pycache__" in n for n in names)

    [metadata_name] = [n for n in names if n.endswith(".dist-info/METADATA")]
    metadata = zipfile.ZipFile(wheel).read(metadata_name).decode()
    assert "License-Expression: MIT" in metadata
    assert "License ::" not in metadata  # deprecated in favour of the SPDX expression
    # Every Django the support matrix (noxfile.py) tests is declared, and nothing else.
    tested = {django for _python, django in _nox_matrix()}
    declared = set(re.findall(r"^Classifier: Framework :: Django :: (\S+)$", metadata, re.M))
    assert declared == tested, (declared, tested)

    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    for required in ("README.md", "CHANGELOG.md", "nomos_billing/locale/de/LC_MESSAGES/django.po",
                     "nomos_billing/locale/de/LC_MESSAGES/django.mo"):
        assert required in members, f"{required} missing from {sdist.name}"


SETTINGS_ADDITION = """

# -- added as the nomos-billing README says --
INSTALLED_APPS += ["nomos_billing"]
NOMOS_BILLING = {
    "CLIENT_ID": "sandbox-client",
    "CLIENT_SECRET": "sandbox-secret",
    "WEBHOOK_SECRETS": ["whsec_new_project"],
    "API_BASE_URL": "http://127.0.0.1:8765",
}
"""

WEBHOOK_SCRIPT = """
from django.test import Client
from django.test.utils import setup_test_environment
from nomos_billing.models import WebhookEvent
from nomos_billing.testing import make_event, post_event

setup_test_environment()
response = post_event(Client(enforce_csrf_checks=True), make_event("test.event"))
assert response.status_code == 200, (response.status_code, response.content)
bad = post_event(Client(), make_event("test.event"), secret="whsec_wrong")
assert bad.status_code == 400, bad.status_code
event = WebhookEvent.objects.get()
print("webhook ok", event.topic, event.status)
"""


@pytest.mark.slow
def test_wheel_installs_into_a_new_project_and_receives_a_webhook(dist: Path,
                                                                  tmp_path: Path) -> None:
    [wheel] = dist.glob("*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DJANGO_", "VIRTUAL_ENV", "PYTHONPATH", "DATABASE_URL",
                                "CACHE_URL"))}
    _run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel,
         cwd=tmp_path, env=env, timeout=600)

    _run(venv / "bin" / "django-admin", "startproject", "newsite", cwd=tmp_path, env=env)
    site = tmp_path / "newsite"
    settings = site / "newsite" / "settings.py"
    settings.write_text(settings.read_text() + SETTINGS_ADDITION)
    urls = site / "newsite" / "urls.py"
    text = urls.read_text().replace("from django.urls import path",
                                    "from django.urls import include, path")
    text = text.replace("path('admin/', admin.site.urls),",
                        "path('admin/', admin.site.urls),\n    "
                        "path('nomos/', include('nomos_billing.urls')),")
    text = text.replace('path("admin/", admin.site.urls),',
                        'path("admin/", admin.site.urls),\n    '
                        'path("nomos/", include("nomos_billing.urls")),')
    assert "nomos_billing.urls" in text, text
    urls.write_text(text)

    manage = [python, "manage.py"]
    assert "no issues" in _run(*manage, "check", cwd=site, env=env)
    assert "nomos_billing" in _run(*manage, "migrate", "--noinput", cwd=site, env=env)
    out = _run(*manage, "shell", "-c", textwrap.dedent(WEBHOOK_SCRIPT), cwd=site, env=env)
    assert "webhook ok test.event" in out
    assert "usage:" in _run(*manage, "nomos_sync", "--help", cwd=site, env=env)
