"""A TCP proxy on loopback that fails the way networks and servers do: refused, or black-holed.

Started and stopped by the test, in front of a real server: PostgreSQL (test_reliability.py),
Redis (test_shared_cache_outage.py).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from tests.ports import free_port


class TcpProxy:
    """In front of a server: forwards, refuses connections (nothing listens on its port), or
    swallows them: accepts, reads and never forwards nor answers, like a black-holed network
    (connections it was forwarding go silent too)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.mode = "forward"
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __enter__(self) -> TcpProxy:
        self._listen()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._close_listener()
        with self._lock:
            for sock in self._sockets:
                sock.close()
        for thread in self._threads:
            thread.join(5)

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode == "refuse":
            # A server that is down: nothing listens, and open connections are gone.
            self._close_listener()
            with self._lock:
                for sock in self._sockets:
                    sock.close()
        elif self._listener is None:
            self._listen()

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        self._start(self._accept, listener)

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _start(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> socket.socket:
        sock.settimeout(0.1)
        with self._lock:
            self._sockets.append(sock)
        return sock

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set() and self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._track(client)
            if self.mode == "refuse":  # accepted just before the listener closed
                client.close()
                continue
            if self.mode == "swallow":
                self._start(self._pump, client, None)
                continue
            upstream = self._track(socket.create_connection(self.target))
            self._start(self._pump, client, upstream)
            self._start(self._pump, upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket | None) -> None:
        while not self._stop.is_set():
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                break
            if sink is None or self.mode != "forward":
                continue  # swallowed
            try:
                sink.sendall(data)
            except OSError:
                break
        for sock in (source, sink):
            if sock is not None:
                sock.close()
