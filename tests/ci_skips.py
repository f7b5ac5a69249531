"""Under ``CI=true``, a PostgreSQL or Redis test that skips fails the run instead.

CI's second pass (.ci/run) sets DATABASE_URL and CACHE_URL so that the tests needing them run;
a skip there means the service was not reached or a set-up step went missing, and a green run
would hide that nothing of the kind was tested. A skip counts as a PostgreSQL (Redis) one when
the test is marked ``postgres`` (``redis``) or the skip's reason names the service, and only in
a pass that has the service's URL: the SQLite pass skips these tests legitimately. A case
that does not apply (a parameter combination without meaning) says so by starting its reason
with ``NOT_APPLICABLE``; such a skip is allowed anywhere.

Imported by tests/conftest.py; usable on its own with ``-p tests.ci_skips``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

#: The start of a skip reason for a case that does not apply, whatever the services.
NOT_APPLICABLE = "does not apply: "

_NAMES = {
    "postgres": re.compile(r"postgres|DATABASE_URL", re.IGNORECASE),
    "redis": re.compile(r"redis|CACHE_URL", re.IGNORECASE),
}


def available(env: Mapping[str, str]) -> set[str]:
    """The services this run was given: ``postgres`` and/or ``redis``."""
    found = set()
    if env.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://", "pgsql://")):
        found.add("postgres")
    if env.get("CACHE_URL", "").startswith(("redis://", "rediss://")):
        found.add("redis")
    return found


def service_skip(reason: str, markers: set[str], env: Mapping[str, str]) -> str | None:
    """The service whose test skipped although this CI run has it, else None."""
    if env.get("CI", "").lower() != "true" or reason.startswith(NOT_APPLICABLE):
        return None
    for service in sorted(available(env)):
        if service in markers or _NAMES[service].search(reason):
            return service
    return None


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(
        longrepr
    )
    return text.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _reason(report)
    markers = {m.name for m in item.iter_markers()}
    service = service_skip(reason, markers, os.environ)
    if service is not None:
        report.outcome = "failed"
        report.longrepr = (
            f"CI=true and this run has {service}: a {service} test may not skip "
            f"(skipped: {reason})"
        )
