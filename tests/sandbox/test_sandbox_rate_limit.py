"""The sandbox's rate limit, as Nomos documents it: N requests per second per API client, 429
above it, ``ratelimit-*`` and ``retry-after`` on every API response; harsher where the documents
are silent (a sliding second, refused requests count)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests

from nomos_billing.sandbox import Fault, Sandbox, SandboxServer
from nomos_billing.sandbox.ratelimit import NOMOS_RATE_LIMIT, RateLimiter, busiest

pytestmark = pytest.mark.live

AUTH = ("sandbox-client", "sandbox-secret")
FORM = {"grant_type": "client_credentials"}
ALICE_SUB = "/subscriptions/sub_sandbox_alice"
HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "retry-after")


@contextmanager
def served(limit: int) -> Iterator[Sandbox]:
    sandbox = Sandbox(rate_limit=limit)
    with SandboxServer(sandbox):
        yield sandbox


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with served(NOMOS_RATE_LIMIT) as sandbox:
        yield sandbox


def bearer(sb: Sandbox) -> dict[str, str]:
    return {"Authorization": f"Bearer {sb.issue_token()}"}


def rate_headers(response: requests.Response) -> dict[str, str]:
    return {name: response.headers[name] for name in HEADERS if name in response.headers}


def within_a_second(sb: Sandbox, first: int, last: int) -> bool:
    """Whether the ``first``-th and ``last``-th counted requests arrived less than a second
    apart (the sandbox's own clock): what decides whether the later one was over the limit."""
    arrivals = list(sb.rate_limiter.arrivals)
    return arrivals[last] - arrivals[first] < 1.0


# -- the counting, at fixed moments ---------------------------------------------------------------


def test_the_limit_counts_a_sliding_second_not_a_fixed_one() -> None:
    limiter = RateLimiter(3)
    # Three late in one second, then two early in the next: a fixed window would admit all.
    verdicts = [limiter.take(t) for t in (0.7, 0.8, 0.9, 1.1, 1.2, 1.95)]
    # ... and the last is in a second that holds the two refused ones and itself.
    assert [v.admitted for v in verdicts if v] == [True, True, True, False, False, True]
    assert limiter.refused == 2
    assert busiest([0.7, 0.8, 0.9, 1.95]) == 3
    assert busiest([0.7, 0.8, 0.9, 1.1, 1.2, 1.95]) == 5


def test_remaining_counts_down_and_retry_after_says_when_one_fits() -> None:
    limiter = RateLimiter(3)
    verdicts = [limiter.take(t) for t in (10.0, 10.2, 10.4, 10.5)]
    assert [(v.remaining, v.reset, v.retry_after) for v in verdicts if v] == [
        (2, 1, 0), (1, 1, 0), (0, 1, 1), (0, 1, 1)
    ]
    assert verdicts[-1] is not None and not verdicts[-1].admitted
    assert verdicts[-1].message == "Wait 1 seconds before retrying."


def test_refused_requests_count_so_retrying_at_once_keeps_a_client_out() -> None:
    limiter = RateLimiter(2)
    assert [v.admitted for t in (0.0, 0.1) if (v := limiter.take(t))] == [True, True]
    # Hammering: every refusal keeps the window full.
    hammered = [limiter.take(0.5 + 0.3 * i) for i in range(6)]
    assert not any(v.admitted for v in hammered if v)
    # Waiting what the last refusal said lets the next one in.
    last = hammered[-1]
    assert last is not None
    assert (next_one := limiter.take(0.5 + 0.3 * 5 + last.retry_after)) is not None
    assert next_one.admitted


def test_limit_zero_counts_nothing() -> None:
    limiter = RateLimiter(0)
    assert all(limiter.take(1.0) is None for _ in range(100))
    assert limiter.refused == 0 and not limiter.arrivals


@pytest.mark.parametrize("value", [-1, 1.5, "10", True, None])
def test_a_limit_is_a_whole_number_of_requests(value: Any) -> None:
    with pytest.raises(ValueError, match="whole number"):
        RateLimiter(value)


# -- over HTTP ------------------------------------------------------------------------------------


def test_the_eleventh_request_in_a_second_gets_nomos_429(
    sb: Sandbox, http: requests.Session
) -> None:
    headers = bearer(sb)
    responses = [http.get(f"{sb.base_url}{ALICE_SUB}", headers=headers) for _ in range(11)]
    assert [rate_headers(r)["ratelimit-remaining"] for r in responses[:10]] == [
        str(n) for n in range(9, -1, -1)
    ]
    assert all(r.status_code == 200 for r in responses[:10])
    last = responses[10]
    if not within_a_second(sb, 0, 10):  # a machine too loaded to send 11 in a second
        pytest.skip("the eleven requests took more than a second")
    assert last.status_code == 429
    body = last.json()
    # The document's error (ErrTooManyRequests) and message, with the real wait in it.
    assert body["code"] == "TOO_MANY_REQUESTS"
    assert body["message"] == "Wait 1 seconds before retrying."
    assert body["requestId"] == last.headers["X-Request-Id"]
    assert body["docs"].endswith("TOO_MANY_REQUESTS")
    assert rate_headers(last) == {
        "ratelimit-limit": "10", "ratelimit-remaining": "0", "ratelimit-reset": "1",
        "retry-after": "1",
    }
    assert sb.rate_limiter.refused == 1
    # Counted where it arrived, logged as answered.
    assert sb.count("GET /subscriptions/{id}") == 11
    assert [e["status"] for e in sb.request_log][-1] == 429


def test_every_api_response_carries_the_headers_and_the_pages_do_not(
    sb: Sandbox, http: requests.Session
) -> None:
    answers = [
        http.post(f"{sb.base_url}/oauth/token", auth=AUTH, data=FORM),
        http.get(f"{sb.base_url}{ALICE_SUB}", headers=bearer(sb)),
        http.get(f"{sb.base_url}/subscriptions/sub_missing", headers=bearer(sb)),
        http.get(f"{sb.base_url}{ALICE_SUB}"),  # no token: 401, counted all the same
        http.delete(f"{sb.base_url}{ALICE_SUB}", headers=bearer(sb)),
    ]
    assert [a.status_code for a in answers] == [200, 200, 404, 401, 405]
    for answer in answers:
        assert set(rate_headers(answer)) == set(HEADERS), answer.url
        assert answer.headers["ratelimit-limit"] == "10"
        assert answer.headers["retry-after"] == "0"
    assert [a.headers["ratelimit-remaining"] for a in answers] == ["9", "8", "7", "6", "5"]

    page = http.get(f"{sb.portal_origin}/auth/confirm")
    control = http.get(f"{sb.base_url}/_sandbox/calls")
    assert rate_headers(page) == {} and rate_headers(control) == {}
    assert len(sb.rate_limiter.arrivals) == 5


def test_a_refused_request_acts_on_nothing_and_uses_up_no_fault(http: requests.Session) -> None:
    with served(1) as sb:
        headers = bearer(sb)
        sb.add_fault("POST /admin/magic_link", Fault(status=500))
        assert http.get(f"{sb.base_url}{ALICE_SUB}", headers=headers).status_code == 200
        refused = http.post(f"{sb.base_url}/admin/magic_link",
                            json={"customerId": "cus_sandbox_alice"}, headers=headers)
        if not within_a_second(sb, 0, 1):
            pytest.skip("two requests took more than a second")
        assert refused.status_code == 429
        assert sb._magic_links == {}  # nothing minted
        assert sb.faults.pending()["POST /admin/magic_link"][0]["status"] == 500


def test_an_injected_error_carries_only_what_its_fault_names(
    sb: Sandbox, http: requests.Session
) -> None:
    sb.add_fault("GET /subscriptions/{id}", Fault(status=429))
    sb.add_fault("GET /subscriptions/{id}", Fault(status=503, retry_after=7))
    sb.add_fault("GET /subscriptions/{id}", Fault(latency=0.01))
    url, headers = f"{sb.base_url}{ALICE_SUB}", bearer(sb)
    bare, named, slow = (http.get(url, headers=headers) for _ in range(3))
    assert (bare.status_code, rate_headers(bare)) == (429, {})
    assert (named.status_code, rate_headers(named)) == (503, {"retry-after": "7"})
    # A fault that only delays is still Nomos answering: the headers are there.
    assert slow.status_code == 200 and slow.headers["ratelimit-remaining"] == "7"
    assert sb.rate_limiter.refused == 0  # injected 429s are not the limit's


def test_switched_off_no_request_is_refused_and_no_header_is_sent(
    http: requests.Session,
) -> None:
    with served(0) as sb:
        headers = bearer(sb)
        statuses = {http.get(f"{sb.base_url}{ALICE_SUB}", headers=headers).status_code
                    for _ in range(30)}
        assert statuses == {200}
        assert rate_headers(http.get(f"{sb.base_url}{ALICE_SUB}", headers=headers)) == {}
        assert sb.rate_limiter.refused == 0


# -- the control API and the command line ----------------------------------------------------------


def test_the_control_api_reports_and_sets_the_limit(sb: Sandbox, http: requests.Session) -> None:
    control = f"{sb.base_url}/_sandbox/rate-limit"
    headers = bearer(sb)
    for _ in range(3):
        http.get(f"{sb.base_url}{ALICE_SUB}", headers=headers)
    report = http.get(control).json()
    assert report["limit"] == 10 and report["requests"] == 3 and report["refused"] == 0
    assert report["busiest_second"] == busiest(list(sb.rate_limiter.arrivals))

    assert http.post(control, json={"limit": 1}).json()["limit"] == 1
    statuses = [http.get(f"{sb.base_url}{ALICE_SUB}", headers=headers).status_code
                for _ in range(2)]
    if within_a_second(sb, -2, -1):
        assert statuses == [200, 429]
        assert http.get(control).json()["refused"] == 1

    assert http.post(f"{sb.base_url}/_sandbox/reset").ok
    assert http.get(control).json() == {
        "limit": 1, "requests": 0, "refused": 0, "busiest_second": 0
    }
    assert http.post(control, json={"limit": 0}).json()["limit"] == 0
    assert rate_headers(http.get(f"{sb.base_url}{ALICE_SUB}", headers=headers)) == {}


@pytest.mark.parametrize("body", [{"limit": -1}, {"limit": "ten"}, {"limit": 2.5},
                                  {"limit": True}, {}, {"limit": 5, "window": 2}])
def test_the_control_api_refuses_a_limit_that_is_not_one(
    sb: Sandbox, http: requests.Session, body: dict[str, Any]
) -> None:
    response = http.post(f"{sb.base_url}/_sandbox/rate-limit", data=json.dumps(body),
                         headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert sb.rate_limiter.limit == 10


def test_the_command_line_sets_the_limit() -> None:
    from nomos_billing.sandbox.__main__ import banner, build_parser, configure

    parser = build_parser()
    default, _ = configure(parser.parse_args([]))
    assert default.rate_limiter.limit == NOMOS_RATE_LIMIT == 10
    off, _ = configure(parser.parse_args(["--rate-limit", "0"]))
    assert off.rate_limiter.limit == 0
    three, _ = configure(parser.parse_args(["--rate-limit", "3"]))
    with SandboxServer(three) as server:
        text = banner(three, server, parser.parse_args(["--rate-limit", "3"]), None)
    assert "rate limit: 3 API requests/s" in text
    assert "--rate-limit" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--rate-limit", "fast"])


def test_a_negative_limit_on_the_command_line_is_a_usage_error(capsys) -> None:
    from nomos_billing.sandbox.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--rate-limit", "-1", "--port", "0"])
    assert exit_info.value.code == 2
    assert "rate limit must be a whole number" in capsys.readouterr().err


def test_a_burst_over_the_limit_is_refused_and_waiting_its_retry_after_lets_the_next_in(
    http: requests.Session,
) -> None:
    # The real clock: three in a burst at a limit of two, then the wait retry-after names.
    with served(2) as sb:
        headers = bearer(sb)
        url = f"{sb.base_url}{ALICE_SUB}"
        burst = [http.get(url, headers=headers) for _ in range(3)]
        if not within_a_second(sb, 0, 2):
            pytest.skip("three requests took more than a second")
        assert [r.status_code for r in burst] == [200, 200, 429]
        time.sleep(int(burst[-1].headers["retry-after"]))
        assert http.get(url, headers=headers).status_code == 200
        assert sb.rate_limiter.refused == 1
