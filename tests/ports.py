"""Loopback ports for servers a test starts in another process (which cannot report a port 0).

Servers in this process bind port 0 and report the port they got (``SandboxServer``, Django's
``live_server``); use this only where a port must be named on a command line.
"""

from __future__ import annotations

import socket
import threading

_handed_out: set[int] = set()
_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free just now and that no other call in this test run has returned.

    Binding port 0 and closing the socket lets the kernel hand the same port to the next
    caller, so two servers of one test (the demo's site and its sandbox) could get one port.
    """
    with _lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("no fresh loopback port after 100 tries")
