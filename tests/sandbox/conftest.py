"""The sandbox's tests talk HTTP to it as a client does: one ``requests`` session per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session
