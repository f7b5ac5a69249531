"""One webhook receiver for the tests that need a real endpoint (sandbox delivery, forwarding,
the envelope contract)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class Receiver:
    """A webhook endpoint on loopback that records raw bodies and headers, answering the
    statuses in ``script`` in turn, then ``status``."""

    def __init__(self, script: list[int] | None = None, status: int = 200) -> None:
        self.script = list(script or [])
        self.status = status
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    outer.bodies.append(body)
                    outer.headers.append(dict(self.headers.items()))
                    status = outer.script.pop(0) if outer.script else outer.status
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/nomos/webhook/"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def received(self) -> list[tuple[dict[str, str], bytes]]:
        return list(zip(self.headers, self.bodies, strict=True))

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(b) for b in self.bodies]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()
