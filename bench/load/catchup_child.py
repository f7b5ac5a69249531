"""Run ``nomos_sync --since auto`` once, counting queries; prints JSON for bench_load.py."""

import json
import os
import sys
import time

sys.path.insert(0, os.getcwd())
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.load.settings")

import django

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

count = 0


def counter(execute, sql, params, many, context):
    global count
    count += 1
    return execute(sql, params, many, context)


with connection.execute_wrapper(counter):
    started = time.perf_counter()
    call_command("nomos_sync", since="auto", verbosity=0)
    seconds = time.perf_counter() - started
print(json.dumps({"queries": count, "seconds": seconds}))
