"""``nomos_sync`` over many subscriptions: time, queries per subscription and peak memory.

The sandbox runs in its own process (so its request log is not counted), seeded through its
control API with N customers of one subscription each. ``nomos_sync`` runs twice per N (the
first run creates, the second updates). Timed runs go without ``tracemalloc`` (it doubled the
figures); this process's Python heap peak comes from an extra, untimed re-sync. Flat peak memory
across N shows pages are processed as they arrive.

    .venv/bin/python bench/bench_sync.py [N ...]     (default: 200 1000 3000, increasing)
"""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
import tracemalloc

import requests
from _setup import environment, setup_django


def start_sandbox() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "nomos_billing.sandbox", "--port", str(port), "--no-seed"],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            requests.get(url + "/_sandbox/calls", timeout=1)
            return process, url
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the sandbox did not start")


def main(sizes: list[int]) -> None:
    process, url = start_sandbox()
    control = requests.Session()
    try:
        setup_django(url)
        from django.core.management import call_command
        from django.db import connection

        print(f"bench_sync: {environment()}")
        print(f"{'N':>6} {'run':>7} {'seconds':>8} {'subs/s':>7} {'queries/sub':>11} "
              f"{'peak MiB':>9} {'API calls':>9}")
        have = 0
        for size in sorted(sizes):
            for n in range(have, size):
                cus = control.post(url + "/_sandbox/customers",
                                   json={"email": f"c{n}@example.com"}).json()
                control.post(url + "/_sandbox/subscriptions",
                             json={"customer_id": cus["id"], "status": "active"})
            have = size
            for run in ("create", "update"):
                if run == "create":
                    from nomos_billing.models import NomosCustomer, NomosSubscription

                    NomosSubscription.objects.all().delete()
                    NomosCustomer.objects.all().delete()
                control.post(url + "/_sandbox/reset")
                queries = [0]

                def count(execute, sql, params, many, context, queries=queries):  # type: ignore[no-untyped-def]
                    queries[0] += 1
                    return execute(sql, params, many, context)

                start = time.perf_counter()
                # Count, don't record: a list of every query would itself grow with N.
                with connection.execute_wrapper(count):
                    call_command("nomos_sync", stdout=io.StringIO())
                elapsed = time.perf_counter() - start
                calls = sum(control.get(url + "/_sandbox/calls").json().values())
                # tracemalloc doubles the run time: the peak comes from a second, untimed run
                # (a re-sync: the same pages, nothing new to create).
                tracemalloc.start()
                call_command("nomos_sync", stdout=io.StringIO())
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                print(f"{size:>6} {run:>7} {elapsed:>8.2f} {size / elapsed:>7.0f} "
                      f"{queries[0] / size:>11.1f} {peak / 2**20:>9.2f} {calls:>9}")
    finally:
        process.terminate()
        process.wait()


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [200, 1000, 3000])
