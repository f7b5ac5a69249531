"""What the sandbox counts and records (calls, exchanges, connections) and the faults it injects."""

from __future__ import annotations

from typing import Any

from .faults import Fault
from .stores import SandboxStores

#: How many exchanges ``request_log`` keeps (each holds its bodies).
REQUEST_LOG_SIZE = 5_000
#: How many portal sessions, webhook deliveries and issued tokens are remembered.
RECORDS_SIZE = 10_000


class Traffic(SandboxStores):
    # -- counting, faults, recording ----------------------------------------------------------

    def count(self, key: str) -> int:
        return self.calls[key]

    def add_fault(self, key: str, fault: Fault, times: int | None = 1) -> None:
        with self.lock:
            self.faults.add(key, fault, times)

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def take_fault(self, key: str, *, wildcard: bool = True) -> Fault | None:
        with self.lock:
            return self.faults.take(key, wildcard=wildcard)

    def reset_counts(self) -> None:
        """Forget counted calls and everything recorded: exchanges, portal sessions, webhook
        deliveries, unused magic links, the rate limit's window and record (not the customers,
        subscriptions, leads, events)."""
        with self.lock:
            self.calls.clear()
            self.request_log.clear()
            self.portal_sessions.clear()
            self.webhook_deliveries.clear()
            self._magic_links.clear()
            self.connections = 0
        self.rate_limiter.clear()

    def note_call(self, key: str) -> None:
        with self.lock:
            self.calls[key] += 1

    def log_exchange(self, exchange: dict[str, Any]) -> None:
        with self.lock:
            self.request_log.append(exchange)

    def count_connection(self) -> None:
        with self.lock:
            self.connections += 1
