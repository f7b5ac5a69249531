"""Load shapes for ``bench/bench_load.py`` (locust, headless). ``BENCH_SCENARIO`` picks one:

- ``bare`` / ``portal``: a logged-in user (session cookie ``BENCH_SESSION``) asks for a bare
  login-required page, or clicks the portal button (a magic link minted at the sandbox; the
  302 is not followed);
- ``webhook``: signed ``subscription.updated`` events, each with a new id, for the
  subscriptions listed in ``BENCH_SUBSCRIPTIONS`` (a file, one id a line);
- ``duplicate``: the same, already processed event over and over.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import secrets
import time

from locust import FastHttpUser, constant, task

SCENARIO = os.environ["BENCH_SCENARIO"]
SECRET = b"whsec_bench"
_subscriptions = itertools.cycle(
    open(os.environ["BENCH_SUBSCRIPTIONS"]).read().split() if SCENARIO == "webhook" else [""])
DUPLICATE = os.environ.get("BENCH_DUPLICATE_EVENT", "")


def signed(event: dict) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(event).encode()
    t = int(time.time())
    v1 = hmac.new(SECRET, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return body, {"X-Nomos-Signature": f"t={t},v1={v1}", "Content-Type": "application/json"}


def event(subscription: str, event_id: str | None = None) -> dict:
    return {"id": event_id or "evt_" + secrets.token_hex(12), "topic": "subscription.updated",
            "created_at": "2026-11-25T12:00:00Z", "context": {"subscription": subscription}}


class Site(FastHttpUser):
    wait_time = constant(0)

    cookie = {"Cookie": f"sessionid={os.environ.get('BENCH_SESSION', '')}"}

    @task
    def one(self) -> None:
        if SCENARIO == "bare":
            with self.client.get("/bare/", allow_redirects=False, name="bare",
                                 headers=self.cookie, catch_response=True) as response:
                if response.status_code != 200:
                    response.failure(f"HTTP {response.status_code}")
        elif SCENARIO == "portal":
            with self.client.get("/nomos/portal/", allow_redirects=False, name="portal",
                                 headers=self.cookie, catch_response=True) as response:
                if response.status_code != 302:
                    response.failure(f"HTTP {response.status_code}")
        elif SCENARIO == "webhook":
            body, headers = signed(event(next(_subscriptions)))
            self.client.post("/nomos/webhook/", data=body, headers=headers, name="webhook")
        elif SCENARIO == "duplicate":
            body, headers = signed(json.loads(DUPLICATE))
            self.client.post("/nomos/webhook/", data=body, headers=headers, name="duplicate")

