"""Validate recorded HTTP exchanges and webhook envelopes against the Nomos OpenAPI document,
as they are: nothing we send is rewritten before validation.

An *exchange* is a dict as ``Sandbox.request_log`` records it: ``method``, ``path``, ``query``
(str), ``headers`` (mapping), ``body`` (bytes), and for responses ``status``,
``response_headers``, ``response_body``. Whatever host the traffic went to, it is validated as
if sent to the document's server, https://api.nomos.energy.

Differences from the document are allowed only by name, in ``KNOWN_DIFFERENCES``, each with its
reason; anything else fails. There is one: the token request's content type (see below).
Envelopes are checked against the document's per-topic event schema (``components.schemas``,
the ``Event`` discriminator's targets). ``TALLY`` counts what was validated; the suite prints
it at the end (``tests/conftest.py``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.exceptions import OpenAPIError
from openapi_core.templating.media_types.exceptions import MediaTypeNotFound
from openapi_schema_validator import OAS30Validator
from werkzeug.datastructures import Headers, ImmutableMultiDict

SPEC_SERVER = "https://api.nomos.energy"
FORM = "application/x-www-form-urlencoded"


_RAW: dict[int, dict[str, Any]] = {}


def load_spec(path: str | None = None) -> OpenAPI:
    path = path or os.environ["NOMOS_OPENAPI_SPEC"]
    spec = OpenAPI.from_file_path(path)
    with open(path, encoding="utf-8") as handle:
        _RAW[id(spec)] = json.load(handle)
    return spec


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
    query = parse_qs(str(exchange.get("query") or ""), keep_blank_values=True)
    return _Request(
        host_url=SPEC_SERVER,
        path=str(exchange["path"]),
        method=str(exchange["method"]).lower(),
        parameters=RequestParameters(query=ImmutableMultiDict(query), header=Headers(headers),
                                     cookie=ImmutableMultiDict()),
        content_type=_get(headers, "Content-Type") or "",
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


#: The differences between what we do and what the document says, each on purpose.
TOKEN_FORM_BODY = "token request form-encoded"
KNOWN_DIFFERENCES = {
    TOKEN_FORM_BODY: (
        "POST /oauth/token is sent application/x-www-form-urlencoded, as RFC 6749 and the "
        "provider's own guides and curl examples do (API-NOTES, 'Authentication'); the OpenAPI "
        "document declares only a JSON body. The client falls back to JSON if Nomos refuses the "
        "form (400/415)."
    ),
}


@dataclass
class Tally:
    requests: int = 0
    responses: int = 0
    envelopes: int = 0
    differences: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        lines = [f"request shapes validated: {self.requests}",
                 f"sandbox answers validated: {self.responses}",
                 f"envelopes validated against their topic's schema: {self.envelopes}"]
        for name, count in sorted(self.differences.items()):
            lines.append(f"known difference {name!r}: {count} (" + KNOWN_DIFFERENCES[name] + ")")
        return lines


TALLY = Tally()


def _is_form_token_request(exchange: Mapping[str, Any]) -> bool:
    content_type = _get(dict(exchange.get("headers") or {}), "Content-Type") or ""
    return (str(exchange["method"]).upper(), str(exchange["path"]).rstrip("/")) == (
        "POST", "/oauth/token") and content_type.split(";")[0].strip() == FORM


def validate_request(spec: OpenAPI, exchange: Mapping[str, Any]) -> str | None:
    """Validate the request exactly as sent. Returns the name of the known difference it shows
    (then its form fields are checked against the document's body schema), else None; raises
    openapi-core's error for anything else."""
    try:
        spec.validate_request(openapi_request(exchange))
    except OpenAPIError as exc:
        if not (_is_form_token_request(exchange)
                and isinstance(exc.__cause__, MediaTypeNotFound)):
            raise
        _check_token_form_fields(spec, exchange)
        TALLY.differences[TOKEN_FORM_BODY] += 1
        return TOKEN_FORM_BODY
    TALLY.requests += 1
    return None


def _check_token_form_fields(spec: OpenAPI, exchange: Mapping[str, Any]) -> None:
    """The form's fields against the JSON body schema the document declares for them: the
    difference is the encoding only, never the content."""
    body_schema = _raw(spec)["paths"]["/oauth/token"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    fields = {k: v[-1] for k, v in
              parse_qs(_body(exchange.get("body")).decode(), keep_blank_values=True).items()}
    OAS30Validator(body_schema).validate(fields)


def validate_exchange(spec: OpenAPI, exchange: Mapping[str, Any]) -> None:
    """Raise openapi-core's validation error if the response breaks the document."""
    spec.validate_response(openapi_request(exchange), openapi_response(exchange))
    TALLY.responses += 1


def _raw(spec: OpenAPI) -> dict[str, Any]:
    return _RAW[id(spec)]


def topic_schemas(spec: OpenAPI) -> dict[str, dict[str, Any]]:
    """topic -> the document's envelope schema for it (the ``Event`` discriminator mapping)."""
    raw = _raw(spec)
    schemas = raw["components"]["schemas"]
    mapping = schemas["Event"]["discriminator"]["mapping"]
    return {topic: schemas[ref.rsplit("/", 1)[-1]] for topic, ref in mapping.items()}


def validate_envelope(spec: OpenAPI, event: Any) -> None:
    """Raise if ``event`` breaks its topic's schema, or has a topic the document does not list
    (``test.event``, the dashboard's test delivery, is checked by the caller instead)."""
    if isinstance(event, (bytes, str)):
        event = json.loads(event)
    topic = event.get("topic") if isinstance(event, dict) else None
    schema = topic_schemas(spec).get(str(topic))
    if schema is None:
        raise ValueError(f"topic {topic!r} is not in the document")
    OAS30Validator(schema, format_checker=OAS30Validator.FORMAT_CHECKER).validate(event)
    TALLY.envelopes += 1


def describe(exchange: Mapping[str, Any]) -> str:
    """A one-line label for assertion messages."""
    query = f"?{exchange['query']}" if exchange.get("query") else ""
    return f"{exchange['method']} {exchange['path']}{query} -> {exchange.get('status')}"
