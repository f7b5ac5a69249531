"""The example project and ``make demo``, run the way a developer runs them: as processes.

Each process gets a clean environment (no DATABASE_URL/CACHE_URL from the suite, no
DJANGO_SETTINGS_MODULE=tests.settings) and its own SQLite file under ``tmp_path``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "example_project"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")}
    env.update(extra)
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=EXAMPLE, env=env, capture_output=True,
        text=True, timeout=120, check=False,
    )


def settings_dump(env: dict[str, str]) -> dict:
    code = ("import json; from django.conf import settings as s; print(json.dumps({"
            "'nomos': s.NOMOS_BILLING, 'db': s.DATABASES['default']['ENGINE'], "
            "'name': str(s.DATABASES['default']['NAME']), 'debug': s.DEBUG, "
            "'languages': [c for c, _ in s.LANGUAGES], 'mw': s.MIDDLEWARE, "
            "'conn': [s.DATABASES['default'][k] for k in ('CONN_MAX_AGE', 'CONN_HEALTH_CHECKS')]"
            "}))")
    result = manage("shell", "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_check_passes_with_no_environment_variables_at_all() -> None:
    result = manage("check", env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_defaults_point_at_the_sandbox_on_sqlite_with_en_and_de(tmp_path: Path) -> None:
    dump = settings_dump(clean_env())

    assert dump["nomos"]["API_BASE_URL"] == "http://127.0.0.1:8765"
    assert dump["nomos"]["CLIENT_ID"] == "sandbox-client"
    assert dump["nomos"]["WEBHOOK_SECRETS"] == ["whsec_sandbox"]
    assert dump["db"] == "django.db.backends.sqlite3" and dump["debug"] is True
    assert dump["languages"] == ["en", "de"]
    assert "django.middleware.locale.LocaleMiddleware" in dump["mw"]
    assert dump["conn"] == [600, True]  # persistent connections, checked before reuse


def test_real_credentials_and_database_come_from_the_environment(tmp_path: Path) -> None:
    env = clean_env(
        NOMOS_API_BASE_URL="https://api.nomos.energy", NOMOS_CLIENT_ID="cli_real",
        NOMOS_CLIENT_SECRET="real-secret", NOMOS_WEBHOOK_SECRETS="whsec_new,whsec_old",
        DATABASE_URL=f"sqlite:///{tmp_path / 'other.sqlite3'}", DJANGO_DEBUG="False",
        DB_CONN_MAX_AGE="0",
    )
    dump = settings_dump(env)

    assert dump["nomos"]["API_BASE_URL"] == "https://api.nomos.energy"
    assert dump["nomos"]["CLIENT_ID"] == "cli_real"
    assert dump["nomos"]["WEBHOOK_SECRETS"] == ["whsec_new", "whsec_old"]
    assert dump["name"] == str(tmp_path / "other.sqlite3")
    assert dump["debug"] is False
    assert dump["conn"] == [0, True]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [({}, {"connect_timeout": 3, "options": "-c statement_timeout=5000"}),
     ({"DB_CONNECT_TIMEOUT": "2", "DB_STATEMENT_TIMEOUT_MS": "0"},
      {"connect_timeout": 2, "options": "-c statement_timeout=0"})],
    ids=["defaults", "from the environment"],
)
def test_postgresql_gets_a_connect_and_a_statement_timeout(extra, expected) -> None:
    # A hanging database answers 503 in seconds (tests/reliability/test_reliability.py shows it).
    code = ("import json; from django.conf import settings as s; "
            "print(json.dumps(s.DATABASES['default']['OPTIONS']))")
    env = clean_env(DATABASE_URL="postgres://site@127.0.0.1:5432/site", **extra)
    result = manage("shell", "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


def test_env_example_explains_every_variable_the_settings_read() -> None:
    settings_text = (EXAMPLE / "example_project" / "settings.py").read_text()
    read = set(re.findall(r'env\.\w+\("([A-Z_]+)"', settings_text))
    documented = set(re.findall(r"^#? ?([A-Z_]+)=", (EXAMPLE / ".env.example").read_text(),
                                re.MULTILINE))
    assert read, "no variables found in settings.py"
    assert read <= documented, f"not in .env.example: {sorted(read - documented)}"


# -- the demo --------------------------------------------------------------------------------


class Demo:
    def __init__(self, db: Path) -> None:
        self.port, self.sandbox_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, str(EXAMPLE / "demo.py"), "--host", "127.0.0.1", "--port",
             str(self.port), "--sandbox-port", str(self.sandbox_port)],
            cwd=ROOT, env=clean_env(DATABASE_URL=f"sqlite:///{db}"), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
            # Its own process group, so stop() can end the demo's children too if it hangs.
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if "Ctrl-C stops both servers" in line:
                self.ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the demo did not come up:\n{self.output}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (an orphaned runserver would hold the pipe open and
        # block the reader for ever) is killed.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


@pytest.fixture
def demo_db(tmp_path: Path) -> Path:
    return tmp_path / "demo.sqlite3"


@pytest.fixture
def demo(demo_db: Path) -> Iterator[Demo]:
    running = Demo(demo_db)
    running.wait_ready()
    yield running
    running.stop()


def login(base: str, username: str, password: str) -> requests.Session:
    session = requests.Session()
    page = session.get(base + "/accounts/login/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, page.text[:500]
    response = session.post(base + "/accounts/login/", timeout=10, data={
        "username": username, "password": password, "csrfmiddlewaretoken": token.group(1),
    }, headers={"Referer": base + "/accounts/login/"})
    assert response.status_code == 200 and username in response.text, response.text[:500]
    return session


@pytest.mark.live
def test_demo_prints_urls_and_logins_and_links_alice_through_the_webhook(demo: Demo) -> None:
    out = demo.output
    assert f"{demo.url}/" in out and f"http://127.0.0.1:{demo.sandbox_port}" in out
    assert "alice / alice-demo" in out and "bob   / bob-demo" in out
    assert re.search(r"subscription\.created for alice delivered: evt_\S+ -> HTTP 200", out), out
    # The hint posts to this demo's port, not the default 8000.
    assert f"nomos_trigger test.event --url {demo.url}/nomos/webhook/" in out, out
    # Linked the way production links, and the banner says which way (read from the database).
    assert "through the signed user reference in its metadata (by_metadata)" in out, out

    alice = login(demo.url, "alice", "alice-demo")
    home = alice.get(demo.url + "/", timeout=10).text
    assert "cus_sandbox_alice" in home and "sub_sandbox_alice" in home
    assert re.search(r'class="status" data-status="active">Active<', home), home
    german = alice.get(demo.url + "/", headers={"Accept-Language": "de"}, timeout=10).text
    assert "Kundenportal" in german and "Abmelden" in german and 'lang="de"' in german
    assert re.search(r'class="status" data-status="active">Aktiv<', german), german

    bob = login(demo.url, "bob", "bob-demo")
    home = bob.get(demo.url + "/", timeout=10).text
    assert 'id="not-linked"' in home and 'href="/nomos/portal/start/"' in home
    assert bob.get(demo.url + "/nomos/portal/start/", timeout=10).status_code == 200


@pytest.mark.live
def test_demo_portal_button_lands_on_the_sandbox_portal_as_alice(demo: Demo) -> None:
    alice = login(demo.url, "alice", "alice-demo")
    response = alice.get(demo.url + "/nomos/portal/?next=/invoices", timeout=10)

    assert response.status_code == 200, response.text[:500]
    portal = f"http://sandbox.customerportal.localhost:{demo.sandbox_port}/auth/confirm"
    assert response.url.startswith(portal)
    assert "alice@example.com" in response.text and "/invoices" in response.text


@pytest.mark.live
def test_demo_runs_again_on_the_same_database_and_stops_on_ctrl_c(demo_db: Path) -> None:
    first = Demo(demo_db)
    first.wait_ready()
    assert first.stop() == 0
    assert "stopping" in first.output

    second = Demo(demo_db)
    second.wait_ready()
    try:
        login(second.url, "alice", "alice-demo")
    finally:
        assert second.stop() == 0
    # Both servers are gone: their ports can be bound again.
    for port in (second.port, second.sandbox_port):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))


def test_demo_refuses_a_port_in_use_with_one_line(demo_db: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, str(EXAMPLE / "demo.py"), "--port", str(port), "--sandbox-port",
             str(free_port())], cwd=ROOT, env=clean_env(DATABASE_URL=f"sqlite:///{demo_db}"),
            capture_output=True, text=True, timeout=60, check=False,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (f"demo: 127.0.0.1:{port} is in use; stop what runs there "
                                     "or pass another port (make demo PORT=...).")


def run_pasted(command: str) -> subprocess.CompletedProcess[str]:
    """A command line from the demo's banner, pasted into a shell in the repository root with
    none of the demo's variables set (a second terminal)."""
    return subprocess.run(["bash", "-c", command], cwd=ROOT, env=clean_env(), capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.live
def test_demo_hints_run_pasted_against_this_demos_ports_and_database(demo: Demo) -> None:
    hints = [line.split("try:", 1)[-1].strip() for line in demo.output.splitlines()
             if "manage.py nomos_" in line]
    [trigger] = [h for h in hints if "nomos_trigger" in h]
    [sync] = [h for h in hints if "nomos_sync" in h]
    # Not the defaults (8765, example_project/db.sqlite3): this demo's sandbox and database.
    assert f"NOMOS_API_BASE_URL=http://127.0.0.1:{demo.sandbox_port} " in sync, sync
    assert "DATABASE_URL=sqlite:///" in sync, sync

    triggered = run_pasted(trigger)
    assert triggered.returncode == 0, triggered.stderr
    assert "HTTP 200" in triggered.stdout + triggered.stderr
    synced = run_pasted(sync)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    # It walked this demo's sandbox (its seeded subscriptions), in this demo's database.
    assert re.search(r"\b[1-9]\d* subscriptions?\b", synced.stdout + synced.stderr), (
        synced.stdout + synced.stderr)


def csrf_of(session: requests.Session, url: str) -> str:
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"',
                      session.get(url, timeout=10).text)
    assert token, url
    return token.group(1)


def start_sign_up(demo: Demo, session: requests.Session) -> str:
    """The sign-up form, sent: the site creates a lead and sends the browser to the sandbox's
    checkout (not followed here). Returns the lead id."""
    url = demo.url + "/nomos/portal/start/"
    data = {"zip_code": "10115", "estimated_usage": "3100",
            "csrfmiddlewaretoken": csrf_of(session, url)}
    response = session.post(url, data=data, timeout=10, allow_redirects=False,
                            headers={"Referer": url})
    assert response.status_code in (302, 303), response.text[:500]
    lead = re.search(r"[?&]id=(lead_[A-Za-z0-9]+)", response.headers["Location"])
    assert lead, response.headers["Location"]
    return lead.group(1)


def finish_checkout(demo: Demo, lead: str, email: str) -> None:
    """What bob's browser posts on the sandbox's hosted checkout (on the plan's own host)."""
    host = f"pln-sandbox-home.checkout.localhost:{demo.sandbox_port}"
    response = requests.post(f"http://127.0.0.1:{demo.sandbox_port}/", headers={"Host": host},
                             allow_redirects=False, timeout=10, data={
                                 "id": lead, "first_name": "Bob", "last_name": "Builder",
                                 "email": email, "zip": "10115", "usage": "3100"})
    assert response.status_code == 303, response.text[:500]
    assert response.headers["Location"] == demo.url + "/"


def home_until(session: requests.Session, demo: Demo, marker: str) -> str:
    """The home page until it shows ``marker`` (the forwarded webhook is on its way); no
    version of it on the way may say "not linked"."""
    for _ in range(100):
        home = session.get(demo.url + "/", timeout=10).text
        assert 'id="not-linked"' not in home, home
        if marker in home:
            return home
        time.sleep(0.1)
    raise AssertionError(f"{marker} never showed:\n{home}")


@pytest.mark.live
def test_right_after_checkout_the_page_says_so_and_the_rerun_banner_shows_bob_linked(
    demo_db: Path,
) -> None:
    first = Demo(demo_db)
    first.wait_ready()
    try:
        bob = login(first.url, "bob", "bob-demo")
        lead = start_sign_up(first, bob)
        # On the way to the checkout (or back from it before Nomos reported it): not "not
        # linked" beside a portal button, but what the button does now.
        home = bob.get(first.url + "/", timeout=10).text
        assert 'id="not-linked"' not in home
        assert "Your sign-up is on its way" in home
        assert 'action="/nomos/portal/"' in home  # the button asks Nomos, no second sign-up
        german = bob.get(first.url + "/", headers={"Accept-Language": "de"}, timeout=10).text
        assert "Ihre Anmeldung ist unterwegs" in german

        # Back from the checkout: every read until the webhook has linked him says so.
        finish_checkout(first, lead, "bob@example.com")
        home = home_until(bob, first, 'id="customer-id"')
        customer_id = re.search(r'id="customer-id">([^<]+)<', home).group(1)
        assert "Your sign-up is on its way" not in home
    finally:
        assert first.stop() == 0

    again = Demo(demo_db)
    again.wait_ready()
    try:
        out = again.output
        # The banner reads the database: bob is linked now, not "no Nomos customer yet".
        linked = rf"bob   / bob-demo\s+linked to {customer_id} \(subscription sub_"
        assert re.search(linked, out), out
        assert "through the lead the site created for this user (by_lead)" in out
        assert "no Nomos customer yet" not in out
        assert "(loaded;" in out
    finally:
        assert again.stop() == 0


@pytest.mark.live
def test_a_contract_held_for_confirmation_is_shown_as_held_not_as_not_linked(demo: Demo) -> None:
    bob = login(demo.url, "bob", "bob-demo")
    lead = start_sign_up(demo, bob)
    # Someone else finishes bob's checkout with their own address: the contract is held until
    # its mailbox confirms (the mail goes to the site's console).
    finish_checkout(demo, lead, "vera@example.org")
    home = home_until(bob, demo, 'id="link-held"')
    assert "An electricity contract is waiting to be connected with your account" in home
    assert "We have sent a confirmation to v" in home  # the button: where the mail went
    assert 'id="customer-id"' not in home and "Your sign-up is on its way" not in home
