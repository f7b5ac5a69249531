"""Pytest fixtures for a live sandbox, loaded automatically by pytest when nomos-billing is
installed (the ``pytest11`` entry point).

- ``nomos_sandbox``: a seeded ``Sandbox`` on an ephemeral loopback port (``.base_url``); while
  it runs, this process resolves ``*.localhost`` (its portal and checkout hosts) to loopback as
  browsers do, so ``requests`` can follow the links it mints. It enforces Nomos' rate limit
  (10 requests/s, 429 above it); ``nomos_sandbox.rate_limiter.set_limit(0)`` turns it off.
- ``nomos_sandbox_settings``: the same, with ``settings.NOMOS_BILLING`` pointing at it (needs
  pytest-django's ``settings`` fixture), its portal and checkout hosts accepted, and the shared
  client and token forgotten, so every test starts from a fresh token. Webhooks are processed
  inside the test's request (``TASK_BACKEND`` off, whatever the site's settings say): no worker
  runs in a test, so a queued event would answer 202 and never be processed. A test of the
  site's task path sets ``TASK_BACKEND`` again after the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .hosts import CHECKOUT_HOSTS, PORTAL_HOSTS, resolve_localhost
from .server import SandboxServer
from .state import Sandbox

CLIENT_ID = "sandbox-client"
CLIENT_SECRET = "sandbox-secret"
WEBHOOK_SECRET = "whsec_sandbox"


@pytest.fixture
def nomos_sandbox() -> Iterator[Sandbox]:
    """A seeded Sandbox served on an ephemeral loopback port; ``.base_url`` is its URL."""
    sandbox = Sandbox(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, webhook_secret=WEBHOOK_SECRET
    )
    with SandboxServer(sandbox), resolve_localhost():
        yield sandbox


@pytest.fixture
def nomos_sandbox_settings(nomos_sandbox: Sandbox, settings: Any) -> Iterator[Sandbox]:
    """``nomos_sandbox`` with NOMOS_BILLING pointed at it (credentials and webhook secret)."""
    from django.core.cache import caches

    from nomos_billing.client import reset_client
    from nomos_billing.conf import nomos_settings

    current = getattr(settings, "NOMOS_BILLING", None) or {}
    settings.NOMOS_BILLING = {
        **current,
        "CLIENT_ID": CLIENT_ID,
        "CLIENT_SECRET": CLIENT_SECRET,
        "WEBHOOK_SECRETS": [WEBHOOK_SECRET],
        "API_BASE_URL": nomos_sandbox.base_url,
        "PORTAL_HOSTS": PORTAL_HOSTS,
        "CHECKOUT_HOSTS": CHECKOUT_HOSTS,
        # Inline: the test sees the event processed when post_event returns (200, not 202).
        "TASK_BACKEND": None,
    }
    caches[nomos_settings.TOKEN_CACHE].delete(nomos_settings.token_cache_key)
    reset_client()
    yield nomos_sandbox
    reset_client()
