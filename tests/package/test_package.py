"""The release: migrations in sync, a quiet build, and the README's Install section as written.

``test_readme_install_section_works_pasted_into_a_new_project`` builds sdist and wheel
(``python -m build``, warnings as errors), installs the wheel into a fresh virtualenv (pip takes
Django and requests from the package index), creates a project with ``django-admin
startproject``, appends the README's settings and urls blocks exactly as written (found by their
``<!-- readme-test: NAME -->`` markers), and runs the README's commands: the sandbox, migrate,
check, nomos_check_credentials, runserver and a signed webhook with nomos_trigger; then the
portal redirect through the login page, the README's pytest example, and the django-environ
variant of the settings.
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
import time
import zipfile
from pathlib import Path

import pytest
import requests
from django.core.management import call_command

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
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


README = ROOT / "README.md"
#: The task-queue settings the README's testing section must survive (docs: task queue).
TASK_QUEUE_DOC = ROOT / "docs" / "how-to" / "task-queue.md"


def readme_block(name: str, source: Path = README, marker: str = "readme-test") -> str:
    """The fenced code block after ``<!-- readme-test: name -->`` in README.md (or
    ``<!-- marker: name -->`` in ``source``), as written."""
    match = re.search(
        rf"<!-- {marker}: {re.escape(name)} -->\n```[a-z]*\n(.*?)\n```", source.read_text(),
        re.S,
    )
    assert match, f"{source.name} has no block marked {marker}: {name}"
    return match.group(1) + "\n"


def test_every_python_block_in_the_readme_compiles() -> None:
    # The marked blocks also run (below); the others at least stay valid Python.
    blocks = re.findall(r"```python\n(.*?)\n```", README.read_text(), re.S)
    assert len(blocks) >= 4
    for block in blocks:
        compile(block, "README.md", "exec")


def _wait_for(url: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"
        try:
            requests.get(url, timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not come up")


def _login(site_url: str, username: str, password: str) -> requests.Session:
    session = requests.Session()
    page = session.get(site_url + "/accounts/login/", timeout=10)
    assert page.status_code == 200, page.text[:300]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, page.text[:500]
    response = session.post(site_url + "/accounts/login/", timeout=10, allow_redirects=False,
                            data={"username": username, "password": password,
                                  "csrfmiddlewaretoken": token.group(1)},
                            headers={"Referer": site_url + "/accounts/login/"})
    assert response.status_code == 302, response.text[:500]
    # The README's LOGIN_REDIRECT_URL lands somewhere real in a brand-new project.
    landing = session.get(site_url + response.headers["Location"], timeout=10,
                          allow_redirects=False)
    assert landing.status_code in (200, 302), (response.headers["Location"], landing.status_code)
    return session


@pytest.mark.slow
def test_readme_install_section_works_pasted_into_a_new_project(dist: Path,
                                                                 tmp_path: Path) -> None:
    """The README's marked blocks, as written, in a brand-new ``startproject`` site."""
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DJANGO_", "VIRTUAL_ENV", "PYTHONPATH", "DATABASE_URL",
                                "CACHE_URL", "NOMOS_"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"

    # Install: the wheel line of the README (the build line is what the dist fixture ran).
    [install] = [line for line in readme_block("install").splitlines()
                 if line.startswith("pip install") and ".whl" in line]
    [wheel] = dist.glob(install.split()[2].split("/")[-1])
    # The test's own tools (pytest for the README's pytest example, django-environ for its
    # settings variant) come in the same pip call, from the package index like Django.
    # The tasks-db extra: the task-queue settings of the docs, for the pytest example below.
    _run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"{wheel}[tasks-db]", "pytest", "pytest-django", "django-environ", cwd=tmp_path,
         env=env, timeout=600)

    _run(bin_dir / "django-admin", "startproject", "newsite", cwd=tmp_path, env=env)
    site = tmp_path / "newsite"
    settings = site / "newsite" / "settings.py"
    pristine = settings.read_text()
    settings.write_text(pristine + "\n" + readme_block("settings"))
    urls = site / "newsite" / "urls.py"
    urls.write_text(urls.read_text() + "\n" + readme_block("urls"))

    sandbox_port, site_port = free_port(), free_port()
    env["NOMOS_API_BASE_URL"] = f"http://127.0.0.1:{sandbox_port}"
    background: list[subprocess.Popen[str]] = []
    outputs: dict[str, str] = {}
    try:
        for line in readme_block("commands").splitlines():
            command = line.split("#", 1)[0].replace("8765", str(sandbox_port))
            command = command.replace("8000", str(site_port)).split()
            assert command[0] == "python", line
            argv = [str(python), *command[1:]]
            if "nomos_billing.sandbox" in command or "runserver" in command:
                proc = subprocess.Popen(argv + (["--noreload"] if "runserver" in command
                                                 else []), cwd=site, env=env, text=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                background.append(proc)
                port = sandbox_port if "nomos_billing.sandbox" in command else site_port
                _wait_for(f"http://127.0.0.1:{port}/", proc)
            else:
                outputs[command[2]] = _run(*argv, cwd=site, env=env, stderr=True)
        assert "no issues" in outputs["check"]
        assert "can be minted" in outputs["nomos_check_credentials"]
        assert "HTTP 200" in outputs["nomos_trigger"], outputs["nomos_trigger"]

        # The portal redirect: anonymous -> the login page; alice -> her sandbox portal.
        site_url = f"http://127.0.0.1:{site_port}"
        anonymous = requests.get(site_url + "/nomos/portal/", timeout=10,
                                 allow_redirects=False)
        assert anonymous.status_code == 302
        assert anonymous.headers["Location"].startswith("/accounts/login/?next=")
        _run(python, "manage.py", "shell", "-c", textwrap.dedent(LINK_ALICE), cwd=site, env=env)
        alice = _login(site_url, "alice", "alice-pw")
        portal = alice.get(site_url + "/nomos/portal/", timeout=10, allow_redirects=False)
        assert portal.status_code == 302, portal.text[:500]
        # The sandbox's portal host, accepted by the README's PORTAL_HOSTS for the sandbox.
        assert portal.headers["Location"].startswith(
            f"http://sandbox.customerportal.localhost:{sandbox_port}/auth/confirm?")
    finally:
        for proc in background:
            proc.terminate()
            proc.wait(timeout=20)

    # The README's pytest example, in the new site, with the package's own fixtures.
    (site / "test_readme_example.py").write_text(readme_block("pytest-example"))
    _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--ds=newsite.settings",
         "test_readme_example.py", cwd=site, env=env)
    # The same, once the docs' task-queue settings are in place too (webhooks to a worker).
    tasks = readme_block("tasks-db", TASK_QUEUE_DOC, "docs-test")
    assert 'NOMOS_BILLING["TASK_BACKEND"]' in tasks
    settings.write_text(settings.read_text() + "\n" + tasks)
    _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--ds=newsite.settings",
         "test_readme_example.py", cwd=site, env=env)

    # The django-environ form of the same settings.
    settings.write_text(pristine + "\n" + readme_block("settings-environ"))
    assert "no issues" in _run(python, "manage.py", "check", cwd=site, env=env)


LINK_ALICE = """
from django.contrib.auth import get_user_model
from nomos_billing.models import NomosCustomer

user = get_user_model().objects.create_user("alice", "alice@example.com", "alice-pw")
NomosCustomer.objects.create(user=user, customer_id="cus_sandbox_alice")
"""
