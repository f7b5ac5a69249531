"""What the fake Nomos account holds, typed once for the parts of ``Sandbox`` that read it.

``Sandbox`` (``state.py``) is composed of parts, one per job: its data (``accounts.py``), events
(``events.py``), tokens (``tokens.py``), magic links (``links.py``) and recorded traffic
(``traffic.py``). ``Sandbox.__init__`` sets every attribute declared here; Nomos' clock is here
because every part writes timestamps.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict, deque
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from . import shapes
from .faults import FaultTable
from .listing import Ordered
from .ratelimit import RateLimiter

DEFAULT_PLAN = "pln_sandbox_home"
#: Not a German postcode; the sandbox answers leads for it with ``unserviceable_zip``.
UNSERVICEABLE_ZIP = "00000"


class EventSink(Protocol):
    """Where fired events go besides ``events``: ``forwarding.Forwarder`` (``--forward-to``)."""

    def submit(self, event: dict[str, Any]) -> None: ...

    def pending(self) -> int: ...

    def describe(self) -> str: ...

    def stop(self) -> None: ...


class SandboxStores:
    """The attributes of a ``Sandbox``; every public mutator takes ``lock``."""

    client_id: str
    client_secret: str
    token_ttl: float
    scope: str
    webhook_secret: str | None
    magic_link_ttl: float
    #: Seconds Nomos' clock runs ahead of ours (negative: behind), ``--clock-skew``: every
    #: timestamp the sandbox writes (``created_at``, ``updated_at``, event timestamps, the
    #: ``Date`` header) comes from ``now()``.
    clock_skew: float
    #: Postcodes ``POST /leads`` and the checkout refuse (``unserviceable_zip``).
    unserviceable_zips: set[str]
    #: Bodies ``POST /oauth/token`` accepts (``token_body``: a name of ``TOKEN_BODIES``);
    #: any other is refused with 415.
    token_content_types: set[str]
    #: Where the hosted checkout sends the browser after a sign-up, per plan id; plans
    #: without one show the sandbox's own confirmation page.
    return_urls: dict[str, str]
    #: Delivers the events this sandbox fires by itself (checkout, status changes) to
    #: ``--forward-to`` URLs; None: events are only recorded (``GET /events/{id}``).
    forwarder: EventSink | None
    #: ``--state FILE``: data is saved there after every change made over HTTP.
    state_path: str | None
    lock: threading.RLock
    #: Nomos' rate limit (``rate_limit`` requests per second, 0: off) and its record:
    #: ``rate_limiter.refused``, ``rate_limiter.arrivals``.
    rate_limiter: RateLimiter
    base_url: str | None
    customers: dict[str, dict[str, Any]]
    subscriptions: dict[str, dict[str, Any]]
    leads: dict[str, dict[str, Any]]
    events: dict[str, dict[str, Any]]
    #: Each list's items in ``created_at`` order, for cursors that survive changes.
    orders: dict[str, Ordered]
    calls: Counter[str]
    # Rings: a long-running sandbox (a 100k-request benchmark, a demo left on for days)
    # keeps the newest records, not every one.
    request_log: deque[dict[str, Any]]
    connections: int
    portal_sessions: deque[dict[str, str]]
    webhook_deliveries: deque[dict[str, Any]]
    faults: FaultTable
    # token -> (monotonic expiry, scope)
    _tokens: dict[str, tuple[float, str]]
    # Every token ever issued, also the expired ones: tests scan logs for them.
    _issued: deque[str]
    # token_hash -> {"customer_id", "created", "used"}
    # Oldest first; a link leaves when it is used or expires (see ``_forget_expired_links``).
    _magic_links: OrderedDict[str, dict[str, Any]]
    _lead_requests: dict[str, dict[str, Any]]
    _subscription_leads: dict[str, str]
    #: Fault: a subscription created from now on answers 404 (and is left out of lists)
    #: for its first this-many seconds, as a read replica that lags the write would.
    unreadable_for: float
    # sub_id -> monotonic time from which GET /subscriptions/{id} finds it
    _readable_at: dict[str, float]

    # -- clock --------------------------------------------------------------------------------

    def now(self) -> datetime:
        """Nomos' clock: ours shifted by ``clock_skew`` seconds."""
        return datetime.now(timezone.utc) + timedelta(seconds=self.clock_skew)

    def now_iso(self) -> str:
        return shapes.iso(self.now())
