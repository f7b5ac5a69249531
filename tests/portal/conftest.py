"""The portal's tests: Alice has her customer (the sandbox's Alice), as the portal needs one."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def alice(linked_alice: Any) -> Any:
    return linked_alice
