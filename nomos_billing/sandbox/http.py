"""Just enough request/response plumbing over WSGI, so the sandbox needs no web framework."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs


class HeaderDict(dict):  # type: ignore[type-arg]
    """A plain dict (JSON-able, printable) whose lookups ignore case, like HTTP does."""

    def _find(self, name: object) -> object:
        if isinstance(name, str) and not dict.__contains__(self, name):
            lowered = name.lower()
            for key in self.keys():
                if key.lower() == lowered:
                    return key
        return name

    def __getitem__(self, name: object) -> Any:
        return dict.__getitem__(self, self._find(name))

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, self._find(name))

    def get(self, name: object, default: Any = None) -> Any:
        return dict.get(self, self._find(name), default)


class ApiError(Exception):
    """Answered as the Nomos error envelope with this status."""

    def __init__(
        self, status: int, message: str, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: HeaderDict
    body: bytes
    base_url: str
    environ: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_environ(cls, environ: dict[str, Any]) -> Request:
        headers = HeaderDict()
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                headers[key[5:].replace("_", "-").title()] = value
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers[key.replace("_", "-").title()] = environ[key]
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        scheme = environ.get("wsgi.url_scheme", "http")
        host = environ.get("HTTP_HOST") or (
            f"{environ.get('SERVER_NAME', 'localhost')}:{environ.get('SERVER_PORT', '80')}"
        )
        # PATH_INFO arrives latin-1 decoded per PEP 3333; undo that to get the real text.
        path = environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8", "replace")
        return cls(
            method=environ.get("REQUEST_METHOD", "GET").upper(),
            path=path or "/",
            query=environ.get("QUERY_STRING", ""),
            headers=headers,
            body=body,
            base_url=f"{scheme}://{host}",
            environ=environ,
        )

    @property
    def params(self) -> dict[str, list[str]]:
        return parse_qs(self.query, keep_blank_values=True)

    def param(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[-1] if values else None

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise ApiError(400, f"Request body is not valid JSON: {exc}") from None

    def data(self) -> dict[str, Any]:
        """The body as a dict, whether it came form-encoded or as JSON; {} when empty."""
        if not self.body.strip():
            return {}
        if self.content_type == "application/x-www-form-urlencoded":
            return {k: v[-1] for k, v in parse_qs(self.body.decode("utf-8", "replace")).items()}
        payload = self.json()
        if not isinstance(payload, dict):
            raise ApiError(400, "Request body must be a JSON object")
        return payload


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def status_line(self) -> str:
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Unknown"
        return f"{self.status} {phrase}"

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def json_response(
    status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> Response:
    text = json.dumps(payload, ensure_ascii=False)
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate a test planted: JSON can still carry it as an escape, as a real
        # server would send it.
        body = json.dumps(payload).encode("ascii")
    return Response(status, body, [("Content-Type", "application/json"), *(headers or [])])


def html_response(status: int, html: str) -> Response:
    return Response(status, html.encode("utf-8"), [("Content-Type", "text/html; charset=utf-8")])
