"""The support matrix: ``make matrix`` (or ``.venv/bin/nox``; ``nox -l`` lists the sessions).

Django 5.2 LTS on Python 3.10 and 3.11; Django 6.0 and 6.1 (which need Python 3.12+) on 3.12 and
3.13. nox finds ``python3.X`` on PATH; pyenv's interpreters are added to PATH here, so the matrix
runs on a machine with ``/root/.pyenv/versions/*`` (or any pyenv root) without activating them.
Pass pytest arguments after ``--``:
``nox -s "tests(3.10-django5.2)" -- -x tests/client/test_client.py``.
"""

from __future__ import annotations

import glob
import os

import nox

nox.options.sessions = ["tests"]
nox.options.error_on_missing_interpreters = True

PYENV_ROOT = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
_bins = sorted(glob.glob(os.path.join(PYENV_ROOT, "versions", "*", "bin")), reverse=True)
os.environ["PATH"] = os.pathsep.join([*_bins, os.environ.get("PATH", "")])

#: (python, django) pairs; each Django release on the Pythons it supports that we test.
MATRIX = [
    ("3.10", "5.2"),
    ("3.11", "5.2"),
    ("3.12", "6.0"),
    ("3.13", "6.0"),
    ("3.12", "6.1"),
    ("3.13", "6.1"),
]


@nox.session
@nox.parametrize(("python", "django"), MATRIX, ids=[f"{p}-django{d}" for p, d in MATRIX])
def tests(session: nox.Session, django: str) -> None:
    """The test suite (without the browser and the slow packaging tests) on one pair."""
    session.install(f"django~={django}.0", "-e", ".[test]")
    session.run("python", "-m", "django", "--version")
    args = session.posargs or ["-m", "not browser and not slow", "-q"]
    session.run("python", "-m", "pytest", *args, env={"PYTHONDEVMODE": "1"})


@nox.session(python="3.12")
def package(session: nox.Session) -> None:
    """Build sdist and wheel, then run the wheel-in-a-new-project test."""
    session.install("-e", ".[test,dev]")
    session.run("python", "-m", "pytest", "-q", "tests/package/test_package.py")
