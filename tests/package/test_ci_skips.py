"""Under CI=true no PostgreSQL or Redis test skips silently (``tests/ci_skips.py``): decided per
skip, and seen failing a real pytest run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ci_skips import service_skip

PG = "postgres://postgres@127.0.0.1:5432/x"
REDIS = "redis://127.0.0.1:6379/1"
CI_PG_REDIS = {"CI": "true", "DATABASE_URL": PG, "CACHE_URL": REDIS}


@pytest.mark.parametrize(
    ("reason", "markers", "env", "fails"),
    [
        # The PostgreSQL + Redis pass of CI: a service's test may not skip.
        ("a gunicorn server shares the test database only on PostgreSQL", set(), CI_PG_REDIS,
         "postgres"),
        ("anything", {"postgres"}, CI_PG_REDIS, "postgres"),
        ("CACHE_URL is not a Redis URL", set(), CI_PG_REDIS, "redis"),
        ("could not import 'redis'", set(), CI_PG_REDIS, "redis"),
        ("anything", {"redis"}, CI_PG_REDIS, "redis"),
        # Skips that name neither service, unmarked: allowed.
        ("nginx is not installed", set(), CI_PG_REDIS, None),
        # A case that does not apply says so, marked or not.
        ("does not apply: the database backend has no queue of its own", {"postgres"},
         CI_PG_REDIS, None),
        ("does not apply: Redis is the queue here", {"redis"}, CI_PG_REDIS, None),
        # The SQLite pass of CI: the same skips are legitimate.
        ("a gunicorn server shares the test database only on PostgreSQL", {"postgres"},
         {"CI": "true"}, None),
        ("CACHE_URL is not a Redis URL", {"redis"}, {"CI": "true", "DATABASE_URL": PG}, None),
        ("only on PostgreSQL", {"postgres"}, {"CI": "true", "CACHE_URL": REDIS}, None),
        # Not CI: a developer's machine may lack anything.
        ("only on PostgreSQL", {"postgres"}, {"DATABASE_URL": PG, "CACHE_URL": REDIS}, None),
        ("only on PostgreSQL", {"postgres"}, {**CI_PG_REDIS, "CI": "false"}, None),
        # A SQLite DATABASE_URL is not PostgreSQL.
        ("only on PostgreSQL", {"postgres"}, {"CI": "true", "DATABASE_URL": "sqlite:///x"}, None),
    ],
)
def test_which_skips_fail_a_ci_run(reason, markers, env, fails):
    assert service_skip(reason, markers, env) == fails


SAMPLE = '''
import pytest

@pytest.mark.postgres
def test_pg_marked():
    pytest.skip("the database is SQLite")

def test_names_redis():
    pytest.skip("no Redis for RQ at redis://127.0.0.1:6379/2")

def test_other_skip():
    pytest.skip("nginx is not installed")

@pytest.mark.postgres
def test_pg_not_applicable():
    pytest.skip("does not apply: a parameter without meaning on PostgreSQL")

@pytest.mark.postgres
def test_pg_runs():
    pass
'''


def run_sample(tmp_path: Path, **env: str) -> str:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    postgres: x\n    redis: x\n")
    root = Path(__file__).resolve().parents[2]
    clean = {k: v for k, v in os.environ.items()
             if k not in ("CI", "DATABASE_URL", "CACHE_URL", "PYTEST_ADDOPTS")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:randomly", "-p", "no:django",
         "-p", "no:nomos_billing", "-p", "no:cacheprovider", "-p", "tests.ci_skips",
         str(tmp_path / "test_sample.py")],
        cwd=tmp_path, env={**clean, "PYTHONPATH": str(root), **env},
        capture_output=True, text=True, timeout=60, check=False,
    )
    return result.stdout


def test_a_ci_run_with_the_services_fails_on_their_skips(tmp_path):
    out = run_sample(tmp_path, CI="true", DATABASE_URL=PG, CACHE_URL=REDIS)
    assert "FAILED test_sample.py::test_pg_marked" in out
    assert "FAILED test_sample.py::test_names_redis" in out
    assert "SKIPPED" in out and "nginx is not installed" in out
    assert "PASSED test_sample.py::test_pg_runs" in out
    assert "2 failed, 1 passed, 2 skipped" in out


def test_the_sqlite_pass_of_ci_skips_them(tmp_path):
    out = run_sample(tmp_path, CI="true")
    assert "1 passed, 4 skipped" in out
