"""Token reuse and call throughput against a live sandbox.

For 100 and 1000 API calls (``get_subscription``) through the shared client: how many token
requests reached the sandbox (the goal is 1), how many TCP connections were opened (keep-alive:
about one per thread), and calls per second; once from one thread and once from 8 threads.

    .venv/bin/python bench/bench_tokens.py
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from _setup import CLIENT_ID, CLIENT_SECRET, environment, setup_django

from nomos_billing.sandbox import Sandbox, SandboxServer, seed


def run(sandbox: Sandbox, calls: int, threads: int) -> dict[str, float]:
    from django.core.cache import cache

    from nomos_billing.client import get_client, reset_client

    reset_client()
    cache.clear()
    sandbox.reset_counts()
    client = get_client()

    def call(_: int) -> None:
        client.get_subscription(seed.ALICE_SUBSCRIPTION)

    start = time.perf_counter()
    if threads == 1:
        for n in range(calls):
            call(n)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(call, range(calls)))
    elapsed = time.perf_counter() - start
    return {
        "token_requests": sandbox.count("POST /oauth/token"),
        "api_calls": sandbox.count("GET /subscriptions/{id}"),
        "connections": sandbox.connections,
        "calls_per_s": calls / elapsed,
        "ms_per_call": elapsed * 1000 / calls,
    }


def main() -> None:
    # Our own code's speed: Nomos' rate limit off in the sandbox (--rate-limit 0).
    sandbox = Sandbox(CLIENT_ID, CLIENT_SECRET, rate_limit=0)
    with SandboxServer(sandbox) as server:
        setup_django(server.url)
        print(f"bench_tokens: {environment()}")
        print(f"{'calls':>6} {'threads':>7} {'token requests':>14} {'connections':>11} "
              f"{'calls/s':>8} {'ms/call':>8}")
        for calls in (100, 1000):
            for threads in (1, 8):
                r = run(sandbox, calls, threads)
                assert r["api_calls"] == calls
                print(f"{calls:>6} {threads:>7} {r['token_requests']:>14} "
                      f"{r['connections']:>11} {r['calls_per_s']:>8.0f} "
                      f"{r['ms_per_call']:>8.2f}")


if __name__ == "__main__":
    main()
