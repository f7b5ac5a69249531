"""A local fake of the Nomos API (in the spirit of stripe-mock), shipped for tests and demos.

``Sandbox`` holds the state and serves it as a WSGI app; ``SandboxServer`` runs that app on a
loopback port; ``Fault`` describes injected failures. Needs only the standard library and
``requests``; Django settings are never read. Run ``python -m nomos_billing.sandbox`` for a
server in the foreground.
"""

from __future__ import annotations

from .faults import Fault
from .server import SandboxServer
from .state import Sandbox

__all__ = ["Fault", "Sandbox", "SandboxServer"]
