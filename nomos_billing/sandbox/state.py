"""The fake Nomos account: ``Sandbox``, composed of its parts (see ``stores.py``).

It knows no HTTP: ``SandboxServer`` (or a test) serves it through ``app.SandboxApp(sandbox)``.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict, deque
from typing import Any

from .accounts import Accounts
from .faults import FaultTable
from .hosts import checkout_origin, portal_origin
from .listing import Ordered
from .persistence import load, save
from .ratelimit import NOMOS_RATE_LIMIT, RateLimiter
from .seed import seed as seed_data
from .stores import DEFAULT_PLAN, UNSERVICEABLE_ZIP
from .tokens import DEFAULT_SCOPE, TOKEN_BODIES, Tokens
from .traffic import RECORDS_SIZE, REQUEST_LOG_SIZE, Traffic


class Sandbox(Accounts, Tokens, Traffic):
    """In-memory Nomos. Every public mutator takes ``self.lock`` so a live server can serve
    concurrent requests; tests may read the dicts directly."""

    def __init__(
        self,
        client_id: str = "sandbox-client",
        client_secret: str = "sandbox-secret",  # noqa: S107 - a fake, published on purpose
        token_ttl: float = 3600,
        seed: bool = True,
        *,
        scope: str = DEFAULT_SCOPE,
        webhook_secret: str | None = None,
        magic_link_ttl: float = 600,
        clock_skew: float = 0.0,
        token_body: str = "both",  # noqa: S107 - a body format, not a secret
        rate_limit: int = NOMOS_RATE_LIMIT,
    ) -> None:
        # What each attribute holds: ``SandboxStores``.
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.scope = scope
        self.webhook_secret = webhook_secret
        self.magic_link_ttl = magic_link_ttl
        self.clock_skew = float(clock_skew)
        self.unserviceable_zips = {UNSERVICEABLE_ZIP}
        self.token_content_types = set(TOKEN_BODIES[token_body])
        self.return_urls = {}
        self.forwarder = None
        self.state_path = None
        self.lock = threading.RLock()
        self.rate_limiter = RateLimiter(rate_limit)
        self.base_url = None
        self.customers = {}
        self.subscriptions = {}
        self.leads = {}
        self.events = {}
        self.orders = {name: Ordered() for name in ("customers", "subscriptions", "leads")}
        self.calls = Counter()
        self.request_log = deque(maxlen=REQUEST_LOG_SIZE)
        self.connections = 0
        self.portal_sessions = deque(maxlen=RECORDS_SIZE)
        self.webhook_deliveries = deque(maxlen=RECORDS_SIZE)
        self.faults = FaultTable()
        self._tokens = {}
        self._issued = deque(maxlen=RECORDS_SIZE)
        self._magic_links = OrderedDict()
        self._lead_requests = {}
        self._subscription_leads = {}
        self.unreadable_for = 0.0
        self._readable_at = {}
        if seed:
            seed_data(self)

    # -- where its pages are -------------------------------------------------------------------

    @property
    def portal_origin(self) -> str:
        """``http://sandbox.customerportal.localhost:<port>`` while it is served."""
        return portal_origin(self.base_url or "http://127.0.0.1")

    def checkout_origin(self, plan: str = DEFAULT_PLAN) -> str:
        """``http://<plan-slug>.checkout.localhost:<port>`` while it is served."""
        return checkout_origin(self.base_url or "http://127.0.0.1", plan)

    # -- persistence ----------------------------------------------------------------------------

    def use_state_file(self, path: str) -> bool:
        """Keep the data in ``path`` from now on: load it if the file exists (True), else
        write the current data there (False)."""
        self.state_path = path
        if load(self, path):
            return True
        self.save_state()
        return False

    def save_state(self) -> None:
        """Write the data to ``state_path`` (no-op without one)."""
        if self.state_path:
            save(self, self.state_path)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "customers": dict(self.customers),
                "subscriptions": {k: self.subscription_view(k) for k in self.subscriptions},
                "leads": dict(self.leads),
                "events": dict(self.events),
                "portal_sessions": list(self.portal_sessions),
            }
