"""Settings of the task worker processes that test_tasks_workers.py starts: the suite's own,
plus the sandbox URL, the task backend and the claim settings the test chose (environment
variables)."""

from __future__ import annotations

import json
import os
from importlib.util import find_spec

from tests.settings import *  # noqa: F403
from tests.settings import NOMOS_BILLING

TASKS = {
    "default": {"BACKEND": ("django.tasks" if find_spec("django.tasks") else "django_tasks")
                + ".backends.immediate.ImmediateBackend"},
    "db": {"BACKEND": "django_tasks_db.DatabaseBackend"},
    "rq": {"BACKEND": "django_tasks_rq.RQBackend"},
}
NOMOS_BILLING = {
    **NOMOS_BILLING,
    "API_BASE_URL": os.environ["NOMOS_TEST_API_BASE_URL"],
    "TASK_BACKEND": os.environ["NOMOS_TEST_TASK_BACKEND"],
    **json.loads(os.environ.get("NOMOS_TEST_SETTINGS", "{}")),
}
