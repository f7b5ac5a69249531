"""Servers and clients for the slow-client test and benchmark
(tests/reliability/test_slow_clients.py, bench/bench_slow_clients.py): gunicorn started with
deploy/gunicorn.conf.py, nginx with a configuration generated from deploy/nginx.conf,
connections that send a request body one byte at a time, and timed clicks. Everything on
loopback; every process started here is stopped here."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PORTAL = "/nomos/portal/"


def nginx_binary() -> str | None:
    """Debian's nginx (``apt-get install nginx-light``), also when /usr/sbin is not on PATH."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def free_port() -> int:
    from tests.ports import free_port as fresh

    return fresh()


def _replace_once(text: str, old: str, new: str) -> str:
    # The template must still hold each value the test replaces: if deploy/nginx.conf changes
    # shape, this fails instead of testing some other configuration.
    assert text.count(old) == 1, f"deploy/nginx.conf no longer has exactly one {old!r}"
    return text.replace(old, new)


def nginx_config(workdir: Path, *, listen: int, upstream: str) -> Path:
    """deploy/nginx.conf with its site values set (loopback port, gunicorn's address), inside a
    minimal main configuration whose pid, logs and temporary files live in ``workdir``."""
    site = (DEPLOY / "nginx.conf").read_text()
    site = _replace_once(site, "listen 80;", f"listen 127.0.0.1:{listen};")
    site = _replace_once(site, "server 127.0.0.1:8000;", f"server {upstream};")
    (workdir / "site.conf").write_text(site)
    temp = {name: workdir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    main = (
        f"{user}worker_processes 1;\npid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} warn;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log off;\n"
        f"    client_body_temp_path {temp['body']};\n"
        f"    proxy_temp_path {temp['proxy']};\n"
        f"    fastcgi_temp_path {temp['fastcgi']};\n"
        f"    uwsgi_temp_path {temp['uwsgi']};\n"
        f"    scgi_temp_path {temp['scgi']};\n"
        f"    include {workdir / 'site.conf'};\n"
        "}\n"
    )
    path = workdir / "nginx.conf"
    path.write_text(main)
    return path


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _wait_listening(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    # A bound against hanging forever, not a performance threshold.
    end = time.monotonic() + 60
    while not _listening(port):
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        if time.monotonic() > end:
            raise RuntimeError(f"{what} does not listen on {port}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def gunicorn(env: dict[str, str], *, workers: int = 3, log: Path | None = None) -> Iterator[str]:
    """gunicorn with deploy/gunicorn.conf.py (``workers`` sync workers) on a spare loopback
    port, serving tests.wsgi with ``env``; yields its address (host:port)."""
    port = free_port()
    env = {**env, "GUNICORN_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(workers),
           "GUNICORN_LOGLEVEL": "warning"}
    out = open(log, "wb") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(DEPLOY / "gunicorn.conf.py"),
         "tests.wsgi:application"],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
    )
    try:
        _wait_listening(port, process, "gunicorn")
        yield f"127.0.0.1:{port}"
    finally:
        _stop(process)
        if log:
            out.close()  # type: ignore[union-attr]


@contextmanager
def nginx(workdir: Path, upstream: str) -> Iterator[str]:
    """nginx in the foreground with the generated configuration; yields its base URL."""
    binary = nginx_binary()
    assert binary, "nginx is not installed"
    port = free_port()
    config = nginx_config(workdir, listen=port, upstream=upstream)
    check = subprocess.run([binary, "-t", "-p", str(workdir), "-c", str(config)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(
        [binary, "-p", str(workdir), "-c", str(config), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, process, "nginx")
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(process)


class SlowBodies:
    """``count`` connections to ``url`` that each POST a webhook body of ``length`` bytes, one
    byte every ``interval`` seconds, until stopped (or the server drops them)."""

    def __init__(self, url: str, count: int = 10, *, interval: float = 2.0,
                 length: int = 1000) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.address = (host, int(port))
        self.count, self.interval, self.length = count, interval, length
        self.sockets: list[socket.socket] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    def __enter__(self) -> SlowBodies:
        head = (
            "POST /nomos/webhook/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {self.length}\r\n\r\n"
        ).encode()
        for _ in range(self.count):
            sock = socket.create_connection(self.address, timeout=5)
            sock.sendall(head)
            self.sockets.append(sock)
        self._thread.start()
        return self

    def _trickle(self) -> None:
        for _ in range(self.length):
            for sock in self.sockets:
                try:
                    sock.send(b"{")
                    self.sent += 1
                except OSError:
                    pass  # dropped by the server: it stays dropped
            if self._stop.wait(self.interval):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in self.sockets:
            sock.close()


def click_times(base_url: str, session_key: str, clicks: int, *,
                timeout: float = 60) -> list[tuple[int, float]]:
    """``clicks`` portal clicks one after another: (status, seconds) each; status 0 when the
    click got no answer within ``timeout``."""
    results = []
    with requests.Session() as http:
        http.cookies.set("sessionid", session_key)
        for _ in range(clicks):
            start = time.perf_counter()
            try:
                status = http.get(base_url + PORTAL, allow_redirects=False,
                                  timeout=timeout).status_code
            except requests.RequestException:
                status = 0
            results.append((status, time.perf_counter() - start))
    return results


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (p99 of 50 values is the largest)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * share // 1))
    return ordered[int(rank) - 1]


def latencies(times: list[float]) -> str:
    """``p50=… ms  p99=… ms  max=… ms``: the columns the benchmarks print for a row."""
    return (f"p50={statistics.median(times) * 1000:9.1f} ms  "
            f"p99={percentile(times, 0.99) * 1000:9.1f} ms  max={max(times) * 1000:9.1f} ms")
