"""A local fake of the Nomos API (in the spirit of stripe-mock), shipped for tests and demos.

``Sandbox`` holds the state and knows no HTTP; ``SandboxServer`` serves it on a loopback port
through the WSGI app it builds from it (``app.SandboxApp(sandbox)``, also usable without a
server); ``Fault`` describes injected failures. Needs only the standard library and
``requests`` (``pytest_plugin``'s settings fixture alone imports Django). Run
``python -m nomos_billing.sandbox`` for a server in the foreground.
"""

from __future__ import annotations

from .faults import Fault
from .server import SandboxServer
from .state import Sandbox

__all__ = ["Fault", "Sandbox", "SandboxServer"]
