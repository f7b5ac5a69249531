"""``nomos_sync`` at scale: peak memory and CPU at 10,000 and 100,000 subscriptions, against the
HTTP+JSON floor of the same walk (issue 22).

The sandbox runs in its own process with no rate limit (``--rate-limit 0``), seeded with
``POST /_sandbox/seed`` (numbered customers with one subscription each; the seeding time is
printed). Every measurement runs in a fresh child process, so that its RSS
high-water mark is its own:

- ``floor``: GET every page of the walk ``nomos_sync`` makes (``GET /subscriptions`` and
  ``GET /customers``, 100 per page) over one ``requests`` session and ``json``-decode it,
  nothing else;
- ``first sync``: ``nomos_sync`` into empty tables (every customer and subscription created);
- ``re-sync``: ``nomos_sync`` again, nothing changed (nothing written);
- ``catch-up``: ``nomos_sync --since <before everything>``: the filtered walk of every
  subscription plus the walk of every customer (``refresh_known``).

For each: wall time, CPU time of the child (user + system; the sandbox's and the database
server's CPU are not in it), and memory: the RSS high-water mark (``ru_maxrss``) of the child
minus its RSS after Django's set-up, i.e. what the walk added. ``--tracemalloc`` adds an untimed
run per row with Python's heap peak (``tracemalloc``; it slows the run about 2x). The goals
(issue 22): peak RSS at 100k within 20 MiB of that at 10k ("memory is one page"), and CPU per
subscription within 3x the floor's.

    DATABASE_URL=postgres://... .venv/bin/python bench/bench_sync.py [--quick] [--sizes N ...]

``--quick``: 1,000 and 10,000. The database named by DATABASE_URL is emptied of Nomos rows.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
from _setup import CLIENT_ID, CLIENT_SECRET, environment

HERE = Path(__file__).resolve().parent
KINDS = ("floor", "first sync", "re-sync", "catch-up")


def start_sandbox() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Our code's cost, not Nomos' 10 requests/s: the sandbox's limit off.
    command = [sys.executable, "-m", "nomos_billing.sandbox", "--port", str(port), "--no-seed",
               "--rate-limit", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            requests.get(url + "/_sandbox/calls", timeout=1)
            return process, url
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the sandbox did not start")


def rss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- in the child --------------------------------------------------------------------------------


def child(kind: str, url: str, trace: bool) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from _setup import setup_django

    setup_django(url)
    from django.core.management import call_command

    from nomos_billing.models import NomosCustomer, NomosSubscription, NomosSyncState

    if kind == "first sync":
        NomosSubscription.objects.all().delete()
        NomosCustomer.objects.all().delete()
    NomosSyncState.objects.all().delete()
    session = requests.Session()
    token = session.post(url + "/oauth/token", auth=(CLIENT_ID, CLIENT_SECRET),
                         data={"grant_type": "client_credentials"}).json()["access_token"]
    session.headers["Authorization"] = f"Bearer {token}"
    import gc

    gc.collect()
    if trace:
        import tracemalloc

        tracemalloc.start()
    base_rss, base_cpu, start = rss_mib(), cpu_seconds(), time.perf_counter()
    pages = 0
    if kind == "floor":
        for path in ("/subscriptions", "/customers"):
            params: dict[str, Any] = {"limit": 100}
            while True:
                page = session.get(url + path, params=params).json()
                pages += 1
                if not page["has_more"]:
                    break
                params["cursor"] = page["next_page"]
    else:
        args = ["--since", "2000-01-01T00:00:00Z"] if kind == "catch-up" else []
        call_command("nomos_sync", *args, stdout=io.StringIO())
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - base_cpu
    result = {"seconds": elapsed, "cpu": cpu, "rss": rss_mib(), "growth": rss_mib() - base_rss,
              "stored": NomosSubscription.objects.count(), "pages": pages}
    if trace:
        import tracemalloc

        result["heap_peak"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return result


def run_child(kind: str, url: str, trace: bool = False) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--url", url] + (["--trace"] if trace else []),
        capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    if out.returncode:
        raise SystemExit(f"{kind} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the parent ----------------------------------------------------------------------------------


def main(sizes: list[int], trace: bool) -> None:
    process, url = start_sandbox()
    try:
        print(f"bench_sync: {environment()}; each row a fresh process; the sandbox in its own "
              "process, not rate-limited")
        print("memory: RSS high-water of the process minus its RSS after Django's set-up "
              "(what the walk added)" + ("; heap: tracemalloc peak of an extra, untimed run"
                                        if trace else ""))
        header = (f"{'N':>7}  {'what':<10} {'wall s':>7} {'CPU s':>6} {'CPU us/sub':>10} "
                  f"{'CPU vs floor':>12} {'RSS MiB':>7} {'growth MiB':>10}")
        if trace:
            header += f" {'heap MiB':>8}"
        print(header)
        peak: dict[tuple[int, str], float] = {}
        ratio: dict[tuple[int, str], float] = {}
        for size in sorted(sizes):
            start = time.perf_counter()
            seeded = requests.post(url + "/_sandbox/seed", json={"subscriptions": size}).json()
            print(f"{size:>7}  seeded {seeded['added']} in {time.perf_counter() - start:.1f} s")
            floor: dict[str, Any] | None = None
            for kind in KINDS:
                result = run_child(kind, url)
                if kind == "floor":
                    floor = result
                assert floor is not None
                per_sub = result["cpu"] / size * 1e6
                vs = result["cpu"] / floor["cpu"]
                peak[size, kind], ratio[size, kind] = result["rss"], vs
                line = (f"{size:>7}  {kind:<10} {result['seconds']:>7.1f} {result['cpu']:>6.1f} "
                        f"{per_sub:>10.0f} {vs:>11.2f}x {result['rss']:>7.0f} "
                        f"{result['growth']:>10.1f}")
                if trace:
                    line += f" {run_child(kind, url, trace=True)['heap_peak']:>8.1f}"
                print(line, flush=True)
        small, large = min(sizes), max(sizes)
        if small != large:
            print(f"peak RSS at {large} minus at {small} (goal: within 20 MiB):")
            for kind in KINDS[1:]:
                print(f"  {kind:<10} {peak[large, kind] - peak[small, kind]:>+7.1f} MiB")
        print(f"CPU vs the HTTP+JSON floor at {large} (goal: within 3x):")
        for kind in KINDS[1:]:
            print(f"  {kind:<10} {ratio[large, kind]:>6.2f}x")
    finally:
        process.terminate()
        process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 and 10,000 subscriptions")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also the Python heap peak of each row (an extra, untimed run)")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.url, args.trace)))
    else:
        main(args.sizes or ([1_000, 10_000] if args.quick else [10_000, 100_000]),
             args.tracemalloc)
