"""Seeding the sandbox with many subscriptions (``seeding``, ``--seed-subscriptions``,
``POST /_sandbox/seed``), as a client sees it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import requests

from nomos_billing.sandbox import Sandbox, SandboxServer
from nomos_billing.sandbox.seeding import seed_subscriptions, seeded

pytestmark = pytest.mark.live


def walk(sb: Sandbox, path: str) -> list[dict]:
    token = sb.issue_token()
    items: list[dict] = []
    params: dict = {"limit": 100}
    with requests.Session() as http:
        while True:
            page = http.get(f"{sb.base_url}{path}", params=params,
                            headers={"Authorization": f"Bearer {token}"}).json()
            items += page["items"]
            if not page["has_more"]:
                return items
            params["cursor"] = page["next_page"]


def test_seeded_subscriptions_are_listed_newest_first_each_with_its_customer() -> None:
    sb = Sandbox()
    assert seed_subscriptions(sb, 250) == 250
    with SandboxServer(sb):
        subscriptions = walk(sb, "/subscriptions")
        customers = walk(sb, "/customers")
        one = requests.get(f"{sb.base_url}/subscriptions/sub_bulk_000000007",
                           headers={"Authorization": f"Bearer {sb.issue_token()}"}).json()
    bulk = [s for s in subscriptions if s["id"].startswith("sub_bulk_")]
    # Newest first: the highest number first, after the demo seed's (newer) items.
    assert [s["id"] for s in bulk] == [f"sub_bulk_{n:09d}" for n in range(249, -1, -1)]
    assert subscriptions[: len(subscriptions) - 250] == [
        s for s in subscriptions if not s["id"].startswith("sub_bulk_")]
    assert {s["customer"] for s in bulk} == {f"cus_bulk_{n:09d}" for n in range(250)}
    assert len({c["id"] for c in customers}) == len(customers) == 250 + 3
    assert {s["status"] for s in bulk} == {"active", "pending", "ended"}
    assert {s["type"] for s in bulk} == {"consumption", "feed_in"}
    assert one["customer"]["id"] == "cus_bulk_000000007"
    assert one["customer"]["email"] == "bulk000000007@example.com"


def test_seeding_adds_only_what_is_missing_and_is_the_same_everywhere() -> None:
    first, second = Sandbox(seed=False), Sandbox(seed=False)
    assert seed_subscriptions(first, 30) == 30
    assert seed_subscriptions(first, 30) == 0
    assert seed_subscriptions(first, 45) == 15
    assert seed_subscriptions(second, 45) == 45
    assert seeded(first) == seeded(second) == 45
    assert first.subscriptions == second.subscriptions
    assert first.customers == second.customers
    with pytest.raises(ValueError):
        seed_subscriptions(first, -1)


def test_seed_control_endpoint() -> None:
    sb = Sandbox(seed=False)
    with SandboxServer(sb), requests.Session() as http:
        url = f"{sb.base_url}/_sandbox/seed"
        assert http.post(url, json={"subscriptions": 20}).json() == {"added": 20, "seeded": 20}
        assert http.post(url, json={"subscriptions": 25}).json() == {"added": 5, "seeded": 25}
        for bad in ({"subscriptions": "many"}, {"subscriptions": True}, {"subscriptions": -3},
                    {"customers": 3}, {}):
            response = http.post(url, json=bad)
            assert response.status_code == 400, bad
        assert len(sb.subscriptions) == 25
        assert http.get(f"{sb.base_url}/_sandbox/calls").json() == {}


def test_seed_on_the_command_line() -> None:
    from nomos_billing.sandbox.__main__ import banner, build_parser, configure

    args = build_parser().parse_args(["--no-seed", "--seed-subscriptions", "40"])
    sandbox, _ = configure(args)
    assert seeded(sandbox) == len(sandbox.subscriptions) == len(sandbox.customers) == 40
    server = SimpleNamespace(url="http://127.0.0.1:1")
    assert "40 numbered customers with one subscription each" in banner(
        sandbox, server, args, None)
    with pytest.raises(SystemExit):
        from nomos_billing.sandbox.__main__ import main

        main(["--seed-subscriptions", "-1"])
