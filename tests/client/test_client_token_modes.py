"""The token endpoint's body modes (``--token-body``): Nomos' guides send a form, its document
declares JSON, and which one production refuses is not documented. The client sends the form
and falls back to JSON once (``NomosClient._token_request``); here against each mode."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from django.core.cache import caches

from nomos_billing.client import get_client, reset_client
from nomos_billing.exceptions import NomosAPIError
from nomos_billing.sandbox import Sandbox, SandboxServer, seed
from nomos_billing.sandbox.__main__ import build_parser, configure

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


@pytest.fixture
def served(settings: Any) -> Iterator[Any]:
    """Start a sandbox of a given mode and point the site at it."""
    servers: list[SandboxServer] = []

    def start(mode: str) -> Sandbox:
        sb = Sandbox(token_body=mode)
        servers.append(SandboxServer(sb).start())
        settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "API_BASE_URL": sb.base_url}
        reset_client()
        caches["default"].clear()
        return sb

    yield start
    for server in servers:
        server.stop()


def token_requests(sb: Sandbox) -> list[tuple[str, int]]:
    return [(e["headers"].get("Content-Type"), e["status"]) for e in sb.request_log
            if e["path"] == "/oauth/token"]


@pytest.mark.parametrize(("mode", "sent"), [
    ("both", [(FORM, 200)]),
    ("form", [(FORM, 200)]),
    ("json", [(FORM, 415), (JSON, 200)]),
])
def test_the_client_gets_a_token_from_every_mode_of_the_token_endpoint(
    served: Any, mode: str, sent: list[tuple[str, int]]
) -> None:
    sb = served(mode)

    assert get_client().get_customer(seed.ALICE)["id"] == seed.ALICE
    get_client().get_customer(seed.ALICE)

    assert token_requests(sb) == sent
    assert sb.count("GET /customers/{id}") == 2


def test_a_json_only_endpoint_is_asked_in_json_from_then_on(served: Any) -> None:
    sb = served("json")
    get_client().get_customer(seed.ALICE)
    sb.expire_tokens()
    caches["default"].clear()
    reset_client()

    get_client().get_customer(seed.ALICE)

    assert token_requests(sb) == [(FORM, 415), (JSON, 200), (JSON, 200)]


@pytest.mark.parametrize(("mode", "form", "as_json"), [
    ("both", 200, 200), ("form", 200, 415), ("json", 415, 200)])
def test_the_cli_option_chooses_which_bodies_the_token_endpoint_takes(
    mode: str, form: int, as_json: int
) -> None:
    sandbox, _ = configure(build_parser().parse_args(["--token-body", mode, "--no-seed"]))
    with SandboxServer(sandbox) as server:
        url, auth = f"{server.url}/oauth/token", ("sandbox-client", "sandbox-secret")
        body = {"grant_type": "client_credentials"}
        assert requests.post(url, data=body, auth=auth, timeout=5).status_code == form
        answer = requests.post(url, json=body, auth=auth, timeout=5)
        assert answer.status_code == as_json
        if as_json == 415:
            assert answer.json()["code"] == "UNSUPPORTED_MEDIA_TYPE"


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(KeyError):
        Sandbox(token_body="xml")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--token-body", "xml"])


def test_a_token_endpoint_refusing_both_is_an_error_naming_the_status(served: Any) -> None:
    sb = served("json")
    sb.token_content_types = set()
    with pytest.raises(NomosAPIError) as info:
        get_client().get_customer(seed.ALICE)
    assert info.value.status == 415
    assert token_requests(sb) == [(FORM, 415), (JSON, 415)]
