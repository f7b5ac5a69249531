"""Settings of the gunicorn servers that test_reliability.py starts: the suite's own, with the
sandbox URL and the time-budget, claim and breaker settings the test chose (environment)."""

from __future__ import annotations

import json
import os

from tests.settings import *  # noqa: F403
from tests.settings import NOMOS_BILLING

NOMOS_BILLING = {
    **NOMOS_BILLING,
    "API_BASE_URL": os.environ["NOMOS_TEST_API_BASE_URL"],
    **json.loads(os.environ.get("NOMOS_TEST_SETTINGS", "{}")),
}
# The server must log its tracebacks where the test can read them.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}
