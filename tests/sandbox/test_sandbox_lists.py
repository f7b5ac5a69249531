"""The sandbox's lists as the document describes them: newest first by ``created_at``, cursors
that neither lose nor repeat an item while data changes between pages (no 400 for a valid
cursor), ``GET /leads``, and walks that cost a page's worth of work per page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from nomos_billing.sandbox import Sandbox, SandboxServer
from nomos_billing.sandbox.listing import decode_cursor

pytestmark = pytest.mark.live


def at(n: int) -> str:
    return f"2026-01-01T00:{n // 60:02d}:{n % 60:02d}.000Z"


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    sandbox = Sandbox(seed=False)
    with SandboxServer(sandbox):
        yield sandbox


def get(sb: Sandbox, http: requests.Session, path: str, **params: str) -> dict[str, Any]:
    answer = http.get(f"{sb.base_url}{path}", params=params,
                      headers={"Authorization": f"Bearer {sb.issue_token()}"}, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()


def customers(sb: Sandbox, count: int, start: int = 0) -> list[str]:
    return [sb.add_customer(f"c{n}@example.com", id=f"cus_{n:04d}", created_at=at(n))["id"]
            for n in range(start, start + count)]


def walk(sb: Sandbox, http: requests.Session, path: str, between: Any = None,
         **params: str) -> list[str]:
    seen: list[str] = []
    for page in range(1000):
        body = get(sb, http, path, **params)
        seen += [item["id"] for item in body["items"]]
        if not body["has_more"]:
            assert body["next_page"] is None
            return seen
        params["cursor"] = body["next_page"]
        if between is not None:
            between(page)
    raise AssertionError("the walk did not end")


def test_lists_come_newest_first_by_created_at_whatever_the_insertion_order(
    sb: Sandbox, http: requests.Session
) -> None:
    for n in (3, 1, 4, 0, 2):
        sb.add_customer(f"c{n}@example.com", id=f"cus_{n:04d}", created_at=at(n))
    assert walk(sb, http, "/customers", limit="2") == [
        "cus_0004", "cus_0003", "cus_0002", "cus_0001", "cus_0000"]


def test_items_created_during_a_walk_neither_repeat_nor_hide_the_others(
    sb: Sandbox, http: requests.Session
) -> None:
    before = customers(sb, 9)
    added = iter(range(100, 110))

    def insert(page: int) -> None:
        n = next(added)
        sb.add_customer(f"new{n}@example.com", id=f"cus_{n:04d}", created_at=at(n))

    seen = walk(sb, http, "/customers", between=insert, limit="2")

    assert seen == before[::-1]


def test_updates_during_a_walk_keep_every_item_in_its_place(
    sb: Sandbox, http: requests.Session
) -> None:
    owner = customers(sb, 1)[0]
    subs = [sb.add_subscription(owner, id=f"sub_{n:04d}", created_at=at(n))["id"]
            for n in range(8)]

    def update(page: int) -> None:
        # Every subscription changes between pages (updated_at moves; created_at does not).
        for sub_id in subs:
            sb.set_subscription_status(sub_id, "active" if page % 2 == 0 else "pending")

    assert walk(sb, http, "/subscriptions", between=update, limit="3") == subs[::-1]


def test_a_cursor_whose_item_left_the_filtered_set_still_answers(
    sb: Sandbox, http: requests.Session
) -> None:
    owner = customers(sb, 1)[0]
    subs = [sb.add_subscription(owner, id=f"sub_{n:04d}", created_at=at(n))["id"]
            for n in range(6)]
    first = get(sb, http, "/subscriptions", limit="2", **{"filter[status][eq]": "pending"})
    assert [i["id"] for i in first["items"]] == ["sub_0005", "sub_0004"]
    # The item the cursor stands on is no longer pending: before, this answered 400.
    sb.set_subscription_status("sub_0004", "active")

    rest = get(sb, http, "/subscriptions", limit="10", cursor=first["next_page"],
               **{"filter[status][eq]": "pending"})

    assert [i["id"] for i in rest["items"]] == subs[3::-1]
    assert rest["has_more"] is False and rest["next_page"] is None


def test_the_cursor_names_a_position_shaped_like_the_documents_example(
    sb: Sandbox, http: requests.Session
) -> None:
    customers(sb, 3)
    body = get(sb, http, "/customers", limit="1")
    moment, last_id = decode_cursor(body["next_page"])
    assert (moment.isoformat(), last_id) == ("2026-01-01T00:00:02+00:00", "cus_0002")


def test_get_leads_lists_leads_newest_first_and_filters_on_created_at(
    sb: Sandbox, http: requests.Session
) -> None:
    made = []
    for n in range(3):
        lead = sb.create_lead({"plan": "pln_x", "address": {"zip": "10115"},
                               "meter": {"estimated_usage": 2000}}, sb.base_url or "")
        lead["created_at"] = at(n)
        made.append(lead["id"])
    sb.orders["leads"] = type(sb.orders["leads"])()  # created_at rewritten above

    assert walk(sb, http, "/leads", limit="2") == made[::-1]
    recent = get(sb, http, "/leads", **{"filter[created_at][gte]": at(1).replace(".000", "")})
    assert [i["id"] for i in recent["items"]] == made[:0:-1]
    assert all(i["object"] == "lead" for i in recent["items"])


def test_a_whole_walk_is_linear_in_the_items() -> None:
    """Pages of 100 over 5,000 customers, half of them filtered out: the walk looks at each
    item once (plus one look-ahead per page), not at the whole list for every page."""
    from nomos_billing.sandbox import listing
    from nomos_billing.sandbox.http import HeaderDict, Request

    sandbox = Sandbox(seed=False)
    for n in range(5000):
        sandbox.customers[f"cus_{n:06d}"] = {"id": f"cus_{n:06d}", "created_at": at(n)}
    order = listing.Ordered()
    looked = 0

    def even(item: dict[str, Any]) -> bool:
        nonlocal looked
        looked += 1
        return int(item["id"][4:]) % 2 == 0

    query, pages, seen = "limit=100", 0, 0
    while True:
        request = Request("GET", "/customers", query, HeaderDict(), b"", "")
        body = listing.page(request, sandbox.customers, order, even)
        pages, seen = pages + 1, seen + len(body["items"])
        if not body["has_more"]:
            break
        query = f"limit=100&cursor={body['next_page']}"

    assert (pages, seen) == (25, 2500)
    assert looked <= 5000 + 2 * pages


def test_the_forwarder_waits_30_seconds_for_the_sites_answer_as_nomos_does(
    monkeypatch: pytest.MonkeyPatch, receiver: Any
) -> None:
    from nomos_billing.sandbox import forwarding

    waited: list[float] = []
    real = forwarding.deliver

    def deliver(*args: Any, timeout: float, **kwargs: Any) -> Any:
        waited.append(timeout)
        return real(*args, timeout=timeout, **kwargs)  # the real delivery, to a real receiver

    monkeypatch.setattr(forwarding, "deliver", deliver)
    sandbox = Sandbox()
    sandbox.forwarder = forwarding.Forwarder(sandbox, [receiver.url], "whsec_x")
    try:
        sandbox.announce("test.event", {})
        assert sandbox.forwarder.wait_idle()
    finally:
        sandbox.forwarder.stop()
    assert waited == [30.0]
    assert [d["status"] for d in sandbox.webhook_deliveries] == [receiver.status]


def test_a_malformed_content_length_is_a_400_not_a_dropped_connection(sb: Sandbox) -> None:
    import socket
    from urllib.parse import urlsplit

    port = urlsplit(sb.base_url).port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET /customers HTTP/1.1\r\nHost: x\r\nContent-Length: :\r\n\r\n")
        answer = conn.recv(1024)
    assert answer.startswith(b"HTTP/1.1 400 ")
