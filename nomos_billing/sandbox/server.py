"""A threaded HTTP/1.1 server on loopback running the sandbox's WSGI app.

Not ``wsgiref.simple_server``: that speaks HTTP/1.0 and closes every connection, and the client
under test is expected to reuse one keep-alive connection. A fault may also need to hang up
without answering, which only the server can do.
"""

from __future__ import annotations

import io
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote_to_bytes

from .app import STOP_EVENT, SandboxApp
from .faults import DropConnectionError
from .state import Sandbox


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128  # tests open dozens of connections at once

    def __init__(
        self, address: tuple[str, int], sandbox: Sandbox, app: SandboxApp, verbose: bool
    ) -> None:
        self.sandbox = sandbox
        self.app = app
        self.verbose = verbose
        self.stopping = threading.Event()
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), which can stall on a resolver; not needed.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.verbose:
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the client's delayed ACK
    # adds ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.sandbox.count_connection()
        with self.server.sockets_lock:
            self.server.open_sockets.add(self.connection)

    def finish(self) -> None:
        with self.server.sockets_lock:
            self.server.open_sockets.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write(f"[nomos sandbox] {self.address_string()} {format % args}\n")

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            # As any HTTP server: a body of unknown length cannot be read, nor the next request.
            self.close_connection = True
            self.send_error(400, "Malformed Content-Length")
            return
        body = self.rfile.read(length) if length > 0 else b""
        path, _, query = self.path.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            # PEP 3333: PATH_INFO is the URL-decoded path carried as latin-1.
            "PATH_INFO": _unquote_latin1(path),
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "SERVER_NAME": self.server.server_name,
            "SERVER_PORT": str(self.server.server_port),
            "SERVER_PROTOCOL": self.request_version,
            "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http",
            STOP_EVENT: self.server.stopping,
        }
        for name, value in self.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                environ[key] = value
        try:
            response = self.server.app.handle(environ)
        except DropConnectionError:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        try:
            self.send_response(response.status)
            for name, value in response.headers:
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
            self.wfile.flush()
        except OSError:  # the client gave up (e.g. its read timeout during a hang)
            self.close_connection = True

    def send_response(self, code: int, message: str | None = None) -> None:
        # As http.server's, without its Date: the app sends Nomos' (``Sandbox.now``).
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Server", self.version_string())

    # http.server dispatches on these exact names.
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve  # noqa: N815

    def __getattr__(self, name: str) -> Any:
        # Any other method (TRACE, QUERY, ...) is the app's to answer (405 on a known path),
        # not http.server's bare 501.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)


def _unquote_latin1(path: str) -> str:
    return unquote_to_bytes(path).decode("latin-1")


class SandboxServer:
    """Serve ``sandbox`` on ``host:port`` (0 = ephemeral) in a daemon thread; a context manager.

    While running, ``sandbox.base_url`` is this server's URL, so minted links point here. The
    server builds the WSGI app (``SandboxApp``) from the state, which knows no HTTP.
    """

    def __init__(
        self, sandbox: Sandbox, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False
    ) -> None:
        self.sandbox = sandbox
        self.app = SandboxApp(sandbox)
        self.host = host
        self.port = port
        self.verbose = verbose
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("SandboxServer is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"  # type: ignore[str-bytes-safe]

    def start(self) -> SandboxServer:
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), self.sandbox, self.app, self.verbose)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"nomos-sandbox-{self._server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        self.sandbox.base_url = self.url
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        url = f"http://{server.server_address[0]!s}:{server.server_address[1]}"  # type: ignore[str-bytes-safe]
        server.stopping.set()
        server.shutdown()
        # Idle keep-alive connections would otherwise hold their threads until the client leaves.
        with server.sockets_lock:
            for sock in list(server.open_sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.sandbox.base_url == url:
            self.sandbox.base_url = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
