"""Pytest fixtures for a live sandbox. Enable with
``pytest_plugins = ["nomos_billing.sandbox.pytest_plugin"]`` in a conftest."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .server import SandboxServer
from .state import Sandbox


@pytest.fixture
def nomos_sandbox() -> Iterator[Sandbox]:
    """A seeded Sandbox served on an ephemeral loopback port; ``.base_url`` is its URL."""
    sandbox = Sandbox()
    with SandboxServer(sandbox):
        yield sandbox
