"""Validate recorded HTTP exchanges against the Nomos OpenAPI document with openapi-core.

An *exchange* is a dict as ``Sandbox.request_log`` records it: ``method``, ``path``, ``query``
(str), ``headers`` (mapping), ``body`` (bytes), and for responses ``status``,
``response_headers``, ``response_body``. Whatever host the traffic went to, it is validated as
if sent to the document's server, https://api.nomos.energy.

The one known difference between the document and Nomos' own guides: the document declares a
JSON body for ``POST /oauth/token`` while the guides (and RFC 6749) use a form-encoded one. A
form body there is re-expressed as JSON before validation, so its fields are still checked
against the document's schema.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

SPEC_SERVER = "https://api.nomos.energy"
FORM = "application/x-www-form-urlencoded"


def load_spec(path: str | None = None) -> OpenAPI:
    return OpenAPI.from_file_path(path or os.environ["NOMOS_OPENAPI_SPEC"])


@dataclass
class _Request:
    host_url: str
    path: str
    method: str
    parameters: RequestParameters
    content_type: str
    body: bytes | None


@dataclass
class _Response:
    status_code: int
    content_type: str
    headers: Headers
    data: bytes


def _get(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _body(value: bytes | str | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else bytes(value)


def openapi_request(exchange: Mapping[str, Any]) -> _Request:
    headers = dict(exchange.get("headers") or {})
    body = _body(exchange.get("body"))
    content_type = _get(headers, "Content-Type") or ""
    method = str(exchange["method"]).lower()
    path = str(exchange["path"])
    if (method, path.rstrip("/")) == ("post", "/oauth/token") and content_type.startswith(FORM):
        # The known difference (see module docstring): validate the form's fields as JSON.
        fields = {k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
        body = json.dumps(fields).encode()
        content_type = "application/json"
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        headers["Content-Type"] = content_type
    query = parse_qs(str(exchange.get("query") or ""), keep_blank_values=True)
    return _Request(
        host_url=SPEC_SERVER,
        path=path,
        method=method,
        parameters=RequestParameters(query=ImmutableMultiDict(query), header=Headers(headers),
                                     cookie=ImmutableMultiDict()),
        content_type=content_type,
        body=body or None,
    )


def openapi_response(exchange: Mapping[str, Any]) -> _Response:
    headers = dict(exchange.get("response_headers") or {})
    return _Response(
        status_code=int(exchange["status"]),
        content_type=_get(headers, "Content-Type") or "",
        headers=Headers(headers),
        data=_body(exchange.get("response_body")),
    )


def validate_request(spec: OpenAPI, exchange: Mapping[str, Any]) -> None:
    """Raise openapi-core's validation error if the request breaks the document."""
    spec.validate_request(openapi_request(exchange))


def validate_exchange(spec: OpenAPI, exchange: Mapping[str, Any]) -> None:
    """Raise openapi-core's validation error if the response breaks the document."""
    spec.validate_response(openapi_request(exchange), openapi_response(exchange))


def describe(exchange: Mapping[str, Any]) -> str:
    """A one-line label for assertion messages."""
    query = f"?{exchange['query']}" if exchange.get("query") else ""
    return f"{exchange['method']} {exchange['path']}{query} -> {exchange.get('status')}"
