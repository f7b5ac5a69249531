"""The WSGI app: route, count, inject faults, check the bearer token, answer, record."""

from __future__ import annotations

import json
import secrets
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

from . import api, checkout, control, hosts, pages
from .faults import DropConnectionError, Fault
from .http import ApiError, HeaderDict, Request, Response, json_response
from .routing import Route, resolve
from .shapes import API_VERSION, error_envelope

if TYPE_CHECKING:
    from .state import Sandbox

#: environ key under which a live server passes its stop event (interrupts injected sleeps).
STOP_EVENT = "nomos_sandbox.stop"
#: environ key set when a fault says to ignore this request's list filters.
IGNORE_FILTERS = "nomos_sandbox.ignore_filters"

StartResponse = Callable[..., Any]
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


class SandboxApp:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.routes: list[Route] = [*api.ROUTES, *pages.ROUTES, *checkout.ROUTES, *control.ROUTES]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        response = self.handle(environ)
        start_response(response.status_line, response.headers)
        return [response.body]

    def handle(self, environ: dict[str, Any]) -> Response:
        """Answer one request; raises ``DropConnectionError`` when a fault says to hang up."""
        response = self._handle(environ)
        if (
            self.sandbox.state_path
            and environ.get("REQUEST_METHOD", "GET") not in _READS
            and response.status < 400
        ):
            # Tokens are not kept, so their requests change nothing worth a write.
            if environ.get("PATH_INFO") != "/oauth/token":
                self.sandbox.save_state()
        return response

    def _handle(self, environ: dict[str, Any]) -> Response:
        sb = self.sandbox
        request = Request.from_environ(environ)
        # One server, three sites told apart by Host, as Nomos' API, portal and checkout are.
        site, label = hosts.site_of(request.headers.get("Host") or "")
        routes = [r for r in self.routes if (r.site == site)]
        route, params, same_path = resolve(routes, request.method, request.path)
        if site == "checkout" and route is not None:
            params = {**params, "plan": hosts.plan_of_slug(label)}
        request_id = "req_" + secrets.token_hex(12)
        # Nomos' clock (``--clock-skew``), which a catch-up may take its watermark from.
        extra = [("Date", format_datetime(sb.now(), usegmt=True)), ("X-Request-Id", request_id)]
        if route is not None and route.kind == "control":
            return _finalize(_run(route, sb, request, params, request_id), extra)
        if route is None and same_path and same_path[0].kind == "control":
            return _finalize(_error(ApiError(405, "Method not allowed"), request_id), extra)

        template = route or (same_path[0] if same_path else None)
        key = f"{request.method} {template.label if template else request.path}"
        kind = template.kind if template else ("api" if site == "api" else "page")
        sb.note_call(key)
        if kind == "api":
            # The version it answered with: the one it knows (an unknown one is refused).
            extra.append(("X-API-Version", API_VERSION))

        # Nomos' limit comes before anything else it does: a refused request acts on nothing,
        # and uses up no injected fault.
        verdict = sb.rate_limiter.take() if kind == "api" else None
        if verdict is not None and not verdict.admitted:
            response = _finalize(
                _error(ApiError(429, verdict.message), request_id), [*extra, *verdict.headers()]
            )
            sb.log_exchange(_exchange(key, kind, request, request_id, response))
            return response

        # "*" is meant for API traffic; the HTML pages get faults only by their own key.
        fault = sb.take_fault(key, wildcard=kind == "api")
        try:
            response = self._answer(fault, route, same_path, request, params, request_id)
        except DropConnectionError:
            sb.log_exchange(_exchange(key, kind, request, request_id, None))
            raise
        if fault is not None and fault.retry_after is not None:
            extra.append(("Retry-After", str(fault.retry_after)))
        if verdict is not None and (fault is None or fault.status is None):
            # An injected error answer carries only what its fault names: how the client copes
            # without these headers is what such a fault tests.
            extra += verdict.headers()
        response = _finalize(response, extra)
        sb.log_exchange(_exchange(key, kind, request, request_id, response))
        return response

    def _answer(
        self,
        fault: Fault | None,
        route: Route | None,
        same_path: list[Route],
        request: Request,
        params: dict[str, str],
        request_id: str,
    ) -> Response:
        acted: Response | None = None
        if fault is not None:
            if fault.act_first and route is not None:
                # A lead made, a link minted, then the failure: what a retry must not repeat.
                acted = self._serve(route, request, params, request_id)
            fault.delay(request.environ.get(STOP_EVENT))
            if fault.drop_connection:
                raise DropConnectionError()
            if fault.status is not None:
                # A 429 says what the document's example says; the Retry-After header comes
                # only when the fault names one (the document declares no response headers).
                message = (
                    "Wait 30 seconds before retrying."
                    if fault.status == 429
                    else f"Injected fault: HTTP {fault.status}"
                )
                return _error(ApiError(fault.status, message), request_id)
            if fault.ignore_filters:
                request.environ[IGNORE_FILTERS] = True
            if fault.drop_cursor and route is not None:
                return _without_cursor(acted or self._serve(route, request, params, request_id))
        if acted is not None:
            return acted
        if route is None:
            if same_path:
                refusal = _error(ApiError(405, f"Method {request.method} not allowed"), request_id)
                # RFC 9110: a 405 names the methods the resource has.
                allowed = ", ".join(sorted({r.method for r in same_path}))
                return Response(
                    refusal.status, refusal.body, [*refusal.headers, ("Allow", allowed)]
                )
            return _error(
                ApiError(404, f"No route for {request.method} {request.path}"), request_id
            )
        if route.kind == "api":
            refused = _version_refused(request)
            if refused is not None:
                return _error(refused, request_id)
        return self._serve(route, request, params, request_id)

    def _serve(
        self, route: Route, request: Request, params: dict[str, str], request_id: str
    ) -> Response:
        if route.scope is not None:
            try:
                self._authorize(request, route.scope)
            except ApiError as exc:
                return _error(exc, request_id)
        return _run(route, self.sandbox, request, params, request_id)

    def _authorize(self, request: Request, needed: str) -> None:
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "Missing bearer token")
        scope = self.sandbox.token_scope(token.strip())
        if scope is None:
            raise ApiError(401, "Invalid or expired access token")
        if f"{needed}:*" not in scope.split():
            raise ApiError(403, f"The access token lacks the {needed}:* scope")


#: The API versions this sandbox answers; a request pinning another is refused.
KNOWN_VERSIONS = frozenset({API_VERSION})


def _version_refused(request: Request) -> ApiError | None:
    """A pinned version this sandbox does not know, refused as the document's error codes
    describe (``upgrade_api_version`` on a 400); no header: the account's default version."""
    pinned = request.headers.get("X-API-Version")
    if pinned is None or pinned.strip() in KNOWN_VERSIONS:
        return None
    message = f"Unknown API version {pinned!r}; use {API_VERSION}"
    return ApiError(
        400,
        f"upgrade_api_version in 'X-API-Version': {message}",
        [{"code": "upgrade_api_version", "field": "X-API-Version", "message": message}],
    )


def _run(
    route: Route, sb: Sandbox, request: Request, params: dict[str, str], request_id: str
) -> Response:
    try:
        return route.handler(sb, request, **params)
    except ApiError as exc:
        return _error(exc, request_id)
    except Exception as exc:  # a sandbox bug should look like a Nomos 500, and be visible
        traceback.print_exc(file=sys.stderr)
        return _error(ApiError(500, f"Sandbox error: {type(exc).__name__}: {exc}"), request_id)


def _without_cursor(response: Response) -> Response:
    """A list page that says more items follow but names no cursor to fetch them with."""
    try:
        page = json.loads(response.body)
    except ValueError:
        return response
    if response.status != 200 or not isinstance(page, dict) or "next_page" not in page:
        return response
    return json_response(200, {**page, "has_more": True, "next_page": None})


def _error(exc: ApiError, request_id: str) -> Response:
    return json_response(
        exc.status, error_envelope(exc.status, exc.message, request_id, exc.errors)
    )


def _finalize(response: Response, extra: list[tuple[str, str]]) -> Response:
    # Content-Length always, so the live server can keep HTTP/1.1 connections alive.
    headers = [(k, v) for k, v in response.headers if k.lower() != "content-length"]
    headers += [*extra, ("Content-Length", str(len(response.body)))]
    return Response(response.status, response.body, headers)


def _exchange(
    key: str, kind: str, request: Request, request_id: str, response: Response | None
) -> dict[str, Any]:
    return {
        "key": key,
        "kind": kind,
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "headers": request.headers,
        "body": request.body,
        "status": response.status if response else None,
        "response_headers": HeaderDict(response.headers if response else []),
        "response_body": response.body if response else b"",
        "request_id": request_id,
        "time": time.time(),
    }
