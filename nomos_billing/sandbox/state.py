"""The fake Nomos account: its data, issued tokens, counters, faults and recorded traffic."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter, OrderedDict
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from . import shapes
from .faults import Fault, FaultTable
from .hosts import checkout_origin, portal_origin
from .listing import Ordered
from .ratelimit import NOMOS_RATE_LIMIT, RateLimiter

if TYPE_CHECKING:
    from .forwarding import Forwarder

DEFAULT_PLAN = "pln_sandbox_home"
DEFAULT_SCOPE = "read:* write:*"
#: Not a German postcode; the sandbox answers leads for it with ``unserviceable_zip``.
UNSERVICEABLE_ZIP = "00000"


def checkout_url(base_url: str, plan: str, **params: str) -> str:
    """The sandbox's stand-in for ``https://{plan.slug}.checkout.energy/?...``: the plan's own
    host under ``.checkout.localhost`` on the sandbox's port (``hosts.py``)."""
    from urllib.parse import urlencode

    query = urlencode(params)
    return checkout_origin(base_url, plan) + "/" + (f"?{query}" if query else "")


FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
#: ``--token-body``: which bodies ``POST /oauth/token`` takes. Nomos' guides send a form, its
#: document declares JSON; which one production refuses is not documented, so the client's
#: fallback is tested against each.
TOKEN_BODIES: dict[str, frozenset[str]] = {
    "both": frozenset({FORM, JSON}),
    "form": frozenset({FORM}),
    "json": frozenset({JSON}),
}

#: How many exchanges ``request_log`` keeps (each holds its bodies).
REQUEST_LOG_SIZE = 5_000
#: How many portal sessions, webhook deliveries and issued tokens are remembered.
RECORDS_SIZE = 10_000


class Ring(list):  # type: ignore[type-arg]
    """A list that keeps only its newest ``size`` items (the oldest go first)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def append(self, item: Any) -> None:
        super().append(item)
        if len(self) > self.size:
            del self[: len(self) - self.size]

    def extend(self, items: Any) -> None:
        super().extend(items)
        if len(self) > self.size:
            del self[: len(self) - self.size]


class Sandbox:
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
        from .app import SandboxApp  # the app module needs this class; import late to avoid a cycle

        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.scope = scope
        self.webhook_secret = webhook_secret
        self.magic_link_ttl = magic_link_ttl
        #: Seconds Nomos' clock runs ahead of ours (negative: behind), ``--clock-skew``: every
        #: timestamp the sandbox writes (``created_at``, ``updated_at``, event timestamps, the
        #: ``Date`` header) comes from ``now()``.
        self.clock_skew = float(clock_skew)
        #: Postcodes ``POST /leads`` and the checkout refuse (``unserviceable_zip``).
        self.unserviceable_zips: set[str] = {UNSERVICEABLE_ZIP}
        #: Bodies ``POST /oauth/token`` accepts (``token_body``: a name of ``TOKEN_BODIES``);
        #: any other is refused with 415.
        self.token_content_types: set[str] = set(TOKEN_BODIES[token_body])
        #: Where the hosted checkout sends the browser after a sign-up, per plan id; plans
        #: without one show the sandbox's own confirmation page.
        self.return_urls: dict[str, str] = {}
        #: Delivers the events this sandbox fires by itself (checkout, status changes) to
        #: ``--forward-to`` URLs; None: events are only recorded (``GET /events/{id}``).
        self.forwarder: Forwarder | None = None
        #: ``--state FILE``: data is saved there after every change made over HTTP.
        self.state_path: str | None = None
        self.lock = threading.RLock()
        #: Nomos' rate limit (``rate_limit`` requests per second, 0: off) and its record:
        #: ``rate_limiter.refused``, ``rate_limiter.arrivals``.
        self.rate_limiter = RateLimiter(rate_limit)
        self.base_url: str | None = None
        self.customers: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.leads: dict[str, dict[str, Any]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        #: Each list's items in ``created_at`` order, for cursors that survive changes.
        self.orders = {name: Ordered() for name in ("customers", "subscriptions", "leads")}
        self.calls: Counter[str] = Counter()
        # Rings: a long-running sandbox (a 100k-request benchmark, a demo left on for days)
        # keeps the newest records, not every one.
        self.request_log: list[dict[str, Any]] = Ring(REQUEST_LOG_SIZE)
        self.connections = 0
        self.portal_sessions: list[dict[str, str]] = Ring(RECORDS_SIZE)
        self.webhook_deliveries: list[dict[str, Any]] = Ring(RECORDS_SIZE)
        self.faults = FaultTable()
        # token -> (monotonic expiry, scope)
        self._tokens: dict[str, tuple[float, str]] = {}
        # Every token ever issued, also the expired ones: tests scan logs for them.
        self._issued: list[str] = Ring(RECORDS_SIZE)
        # token_hash -> {"customer_id", "created", "used"}
        # Oldest first; a link leaves when it is used or expires (see ``_forget_expired_links``).
        self._magic_links: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lead_requests: dict[str, dict[str, Any]] = {}
        self._subscription_leads: dict[str, str] = {}
        #: Fault: a subscription created from now on answers 404 (and is left out of lists)
        #: for its first this-many seconds, as a read replica that lags the write would.
        self.unreadable_for = 0.0
        # sub_id -> monotonic time from which GET /subscriptions/{id} finds it
        self._readable_at: dict[str, float] = {}
        self.wsgi_app = SandboxApp(self)
        if seed:
            from .seed import seed as seed_data

            seed_data(self)

    # -- clock --------------------------------------------------------------------------------

    def now(self) -> datetime:
        """Nomos' clock: ours shifted by ``clock_skew`` seconds."""
        return datetime.now(timezone.utc) + timedelta(seconds=self.clock_skew)

    def now_iso(self) -> str:
        return shapes.iso(self.now())

    # -- where its pages are -------------------------------------------------------------------

    @property
    def portal_origin(self) -> str:
        """``http://sandbox.customerportal.localhost:<port>`` while it is served."""
        return portal_origin(self.base_url or "http://127.0.0.1")

    def checkout_origin(self, plan: str = DEFAULT_PLAN) -> str:
        """``http://<plan-slug>.checkout.localhost:<port>`` while it is served."""
        return checkout_origin(self.base_url or "http://127.0.0.1", plan)

    # -- data ---------------------------------------------------------------------------------

    def add_customer(
        self,
        email: str,
        first_name: str = "Sandbox",
        last_name: str = "Customer",
        type: str = "person",
        id: str | None = None,
        *,
        company_name: str | None = None,
        created_at: str | None = None,
    ) -> dict[str, Any]:
        data = shapes.customer(
            id=id or shapes.new_id("cus"),
            email=email,
            first_name=first_name,
            last_name=last_name,
            type=type,
            company_name=company_name,
            created_at=created_at or self.now_iso(),
        )
        with self.lock:
            self.customers[data["id"]] = data
        return data

    def add_subscription(
        self,
        customer_id: str,
        status: str = "pending",
        plan: str = DEFAULT_PLAN,
        type: str = "consumption",
        metadata: dict[str, Any] | None = None,
        id: str | None = None,
        *,
        estimated_usage: float = 2500,
        zip_code: str = "10115",
        lead_id: str | None = None,
        created_at: str | None = None,
    ) -> dict[str, Any]:
        with self.lock:
            if customer_id not in self.customers:
                raise KeyError(f"unknown customer {customer_id!r}")
            data = shapes.subscription(
                id=id or shapes.new_id("sub"),
                customer_id=customer_id,
                plan=plan,
                status=status,
                type=type,
                metadata=metadata,
                estimated_usage=estimated_usage,
                zip_code=zip_code,
                created_at=created_at or self.now_iso(),
            )
            self.subscriptions[data["id"]] = data
            if self.unreadable_for > 0:
                self._readable_at[data["id"]] = time.monotonic() + self.unreadable_for
            if lead_id:
                self._subscription_leads[data["id"]] = lead_id
        return data

    def set_subscription_status(self, sub_id: str, status: str) -> dict[str, Any]:
        with self.lock:
            sub = self.subscriptions[sub_id]
            shapes.apply_status(sub, status, self.now_iso())
            return sub

    def is_readable(self, sub_id: str) -> bool:
        """False while a new subscription is inside its ``unreadable_for`` window."""
        with self.lock:
            readable_at = self._readable_at.get(sub_id)
            if readable_at is None:
                return sub_id in self.subscriptions
            if time.monotonic() >= readable_at:
                del self._readable_at[sub_id]
                return True
            return False

    def make_readable(self, sub_id: str | None = None) -> None:
        """End the unreadable window of one subscription, or of all of them."""
        with self.lock:
            if sub_id is None:
                self._readable_at.clear()
            else:
                self._readable_at.pop(sub_id, None)

    def subscription_view(self, sub_id: str) -> dict[str, Any]:
        """The subscription as ``GET /subscriptions/{id}`` returns it (customer embedded)."""
        with self.lock:
            return shapes.full_subscription(self.subscriptions[sub_id], self.customers)

    def lead_of(self, sub_id: str) -> str | None:
        return self._subscription_leads.get(sub_id)

    def create_lead(self, payload: dict[str, Any], base_url: str) -> dict[str, Any]:
        lead_id = shapes.new_id("lead")
        # As Nomos: the plan's hosted checkout with the lead's id (``?id=lead_...``).
        data = shapes.lead(
            id=lead_id,
            link=checkout_url(base_url, str(payload.get("plan") or DEFAULT_PLAN), id=lead_id),
            metadata=payload.get("metadata"),
            created_by=payload.get("created_by"),
            created_at=self.now_iso(),
        )
        with self.lock:
            self.leads[lead_id] = data
            self._lead_requests[lead_id] = payload
        return data

    def convert_lead(
        self, lead_id: str, status: str = "pending", type: str = "consumption"
    ) -> dict[str, Any]:
        """Finish the lead's checkout: a new customer and subscription.

        The lead's metadata stays on the lead: Nomos documents no copy onto the subscription,
        so the subscription is linked back through ``context.lead`` or ``GET /leads/{id}``.

        Returns the subscription as ``GET /subscriptions/{id}`` would. ``ValueError`` if the
        lead already converted, ``KeyError`` if it does not exist.
        """
        with self.lock:
            lead = self.leads[lead_id]
            if lead["subscription"]:
                raise ValueError(f"lead {lead_id} already converted")
            request = self._lead_requests.get(lead_id, {})
            person = request.get("customer") or {}
            cus = self.add_customer(
                email=person.get("email") or f"{lead_id}@example.com",
                first_name=person.get("first_name") or "Checkout",
                last_name=person.get("last_name") or "Customer",
                type=person.get("type") or "person",
                company_name=person.get("company_name"),
            )
            sub = self.add_subscription(
                cus["id"],
                status=status,
                plan=request.get("plan") or DEFAULT_PLAN,
                type=type,
                estimated_usage=(request.get("meter") or {}).get("estimated_usage", 2500),
                zip_code=(request.get("address") or {}).get("zip", "10115"),
                lead_id=lead_id,
            )
            lead["subscription"] = sub["id"]
            lead["subscribed_at"] = sub["created_at"]
            return self.subscription_view(sub["id"])

    def complete_checkout(
        self,
        plan: str,
        *,
        person: dict[str, str],
        zip_code: str,
        usage: float,
        metadata: dict[str, str],
        lead_id: str | None = None,
        token_hash: str | None = None,
    ) -> dict[str, Any]:
        """A submitted hosted checkout: the customer (new, the lead's, or the one a magic link
        named) gets a pending subscription whose metadata is exactly the ``metadata.<key>``
        parameters of the checkout URL; ``subscription.created`` is fired (with
        ``context.lead`` for a lead). Returns the stored subscription.

        ``ValueError`` when the lead already converted or the magic link is used up.
        """
        with self.lock:
            if lead_id:
                sub_id = self.convert_lead(lead_id)["id"]
                sub = self.subscriptions[sub_id]
                # What the checkout URL carried is persisted; the lead's own metadata is not
                # the checkout's business (API-NOTES, "Hosted checkout and leads").
                sub["metadata"] = dict(metadata) or sub.get("metadata")
                sub["estimated_usage"] = usage
                sub["address"]["zip"] = sub["billing_address"]["zip"] = zip_code
                customer = self.customers[sub["customer"]]
                customer.update({k: v for k, v in person.items() if v})
            else:
                if token_hash:
                    entry = self._magic_links.get(token_hash)
                    if self.checkout_customer(token_hash) is None or entry is None:
                        raise ValueError("this checkout link has been used or has expired")
                    entry["used"] = True
                    customer_id = entry["customer_id"]
                else:
                    customer_id = self.add_customer(
                        email=person.get("email") or "checkout@example.com",
                        first_name=person.get("first_name") or "Checkout",
                        last_name=person.get("last_name") or "Customer",
                    )["id"]
                sub = self.add_subscription(
                    customer_id,
                    plan=plan,
                    metadata=dict(metadata) or None,
                    estimated_usage=usage,
                    zip_code=zip_code,
                )
            self.announce("subscription.created", {"subscription": sub["id"]})
            return sub

    def event_context(self, topic: str, subscription_id: str) -> dict[str, str]:
        """The ids an event of ``topic`` about ``subscription_id`` carries, as Nomos sends them:
        ``invoice.*`` and ``meter_order.*`` name their own object and the subscription."""
        family = topic.split(".", 1)[0]
        context = {"subscription": subscription_id}
        if family == "invoice":
            context["invoice"] = shapes.new_id("inv")
            if topic == "invoice.voided":
                # A voided invoice names the credit note that offsets it.
                context["voiding_invoice"] = shapes.new_id("inv")
        elif family == "meter_order":
            context["meter_order"] = shapes.new_id("prdo")
        elif family != "subscription":
            return {}
        return context

    def announce(self, topic: str, context: dict[str, Any]) -> dict[str, Any]:
        """Fire an event as Nomos does: recorded for ``GET /events/{id}`` and, when the
        sandbox forwards, delivered signed to every ``--forward-to`` URL (in the background)."""
        event = self.build_event(topic, context)
        if self.forwarder is not None:
            self.forwarder.submit(event)
        return event

    # -- persistence ----------------------------------------------------------------------------

    def use_state_file(self, path: str) -> bool:
        """Keep the data in ``path`` from now on: load it if the file exists (True), else
        write the current data there (False)."""
        from .persistence import load

        self.state_path = path
        if load(self, path):
            return True
        self.save_state()
        return False

    def save_state(self) -> None:
        """Write the data to ``state_path`` (no-op without one)."""
        if self.state_path:
            from .persistence import save

            save(self, self.state_path)

    # -- events and webhooks --------------------------------------------------------------------

    def build_event(
        self, topic: str, context: dict[str, Any] | None = None, event_id: str | None = None
    ) -> dict[str, Any]:
        context = dict(context or {})
        # Nomos puts the lead on subscription.created when the checkout came from one.
        if topic == "subscription.created" and "lead" not in context:
            lead_id = self.lead_of(str(context.get("subscription", "")))
            if lead_id:
                context["lead"] = lead_id
        event = {
            "id": event_id or shapes.new_id("evt"),
            "timestamp": self.now_iso(),
            "topic": topic,
            "context": context,
        }
        with self.lock:
            self.events[str(event["id"])] = event
        return event

    def send_webhook(
        self,
        url: str,
        topic: str,
        *,
        secret: str | None = None,
        context: dict[str, Any] | None = None,
        event_id: str | None = None,
        timestamp: int | None = None,
        duplicate: int = 1,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """Deliver a signed event to ``url`` ``duplicate`` times; return its envelope.

        An ``event_id`` already in ``events`` is re-delivered unchanged (a retry). Each delivery's
        status (or connection error) is appended to ``webhook_deliveries``.
        """
        from .webhooks import deliver

        secret = secret if secret is not None else self.webhook_secret
        if not secret:
            raise ValueError("send_webhook needs a secret (or Sandbox(webhook_secret=...))")
        with self.lock:
            existing = self.events.get(event_id) if event_id else None
        event = existing or self.build_event(topic, context, event_id)
        deliveries = deliver(
            url, event, secret, timestamp=timestamp, times=duplicate, timeout=timeout
        )
        with self.lock:
            self.webhook_deliveries.extend(deliveries)
        return event

    # -- tokens -------------------------------------------------------------------------------

    def issue_token(self, scope: str | None = None) -> str:
        """A valid access token, as ``POST /oauth/token`` grants (``scope`` overrides)."""
        token = "sbx_at_" + secrets.token_urlsafe(32)
        with self.lock:
            self._tokens[token] = (time.monotonic() + self.token_ttl, scope or self.scope)
            self._issued.append(token)
        return token

    def issue_refresh_token(self) -> str:
        # Never redeemable here (only client_credentials is granted), but still a secret.
        token = "sbx_rt_" + secrets.token_hex(32)
        with self.lock:
            self._issued.append(token)
        return token

    def issued_tokens(self) -> list[str]:
        """Every access and refresh token this sandbox has handed out, valid or not."""
        with self.lock:
            return list(self._issued)

    def token_scope(self, token: str) -> str | None:
        """The scope of a valid token, or None if it is unknown or expired."""
        with self.lock:
            entry = self._tokens.get(token)
            if entry is None:
                return None
            if time.monotonic() >= entry[0]:
                del self._tokens[token]
                return None
            return entry[1]

    def expire_tokens(self) -> None:
        with self.lock:
            self._tokens.clear()

    # -- magic links --------------------------------------------------------------------------

    def mint_magic_link(self, customer_id: str, base_url: str) -> str:
        """A single-use link: the portal, or for a customer without a subscription (as Nomos
        does) the hosted checkout of the default plan, where that customer signs up."""
        token_hash = secrets.token_hex(20)
        with self.lock:
            has_subscription = any(
                s["customer"] == customer_id for s in self.subscriptions.values()
            )
            self._forget_expired_links()
            self._magic_links[token_hash] = {
                "customer_id": customer_id,
                "created": time.monotonic(),
                "used": False,
            }
        if not has_subscription:
            return checkout_url(base_url, DEFAULT_PLAN, token_hash=token_hash)
        # As Nomos' example spells it (``next`` unescaped).
        return (
            f"{portal_origin(base_url)}/auth/confirm?token_hash={token_hash}"
            "&type=magiclink&next=/overview"
        )

    def checkout_customer(self, token_hash: str) -> dict[str, Any] | None:
        """The customer a checkout link minted by ``POST /admin/magic_link`` is for, while it
        is unused and fresh (it is used up by the sign-up, not by viewing the page)."""
        with self.lock:
            entry = self._magic_links.get(token_hash)
            if (
                entry is None
                or entry["used"]
                or time.monotonic() - entry["created"] > self.magic_link_ttl
            ):
                return None
            return self.customers.get(entry["customer_id"])

    def redeem_magic_link(self, token_hash: str, next_page: str) -> dict[str, Any] | None:
        """The customer for a first, unexpired use of the link; None otherwise."""
        with self.lock:
            # Single use: a used link is forgotten, and unknown answers as used does.
            entry = self._magic_links.pop(token_hash, None)
            if entry is None or entry["used"]:
                return None
            if time.monotonic() - entry["created"] > self.magic_link_ttl:
                return None
            self.portal_sessions.append({"customer_id": entry["customer_id"], "next": next_page})
            return self.customers.get(entry["customer_id"])

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

    def _forget_expired_links(self) -> None:
        # Called with the lock held; links are minted in time order, so the oldest come first.
        # Beyond RECORDS_SIZE unused links the oldest go too (a load test never redeems any).
        horizon = time.monotonic() - self.magic_link_ttl
        while self._magic_links:
            token_hash, entry = next(iter(self._magic_links.items()))
            if entry["created"] > horizon and len(self._magic_links) < RECORDS_SIZE:
                return
            del self._magic_links[token_hash]

    def note_call(self, key: str) -> None:
        with self.lock:
            self.calls[key] += 1

    def log_exchange(self, exchange: dict[str, Any]) -> None:
        with self.lock:
            self.request_log.append(exchange)

    def count_connection(self) -> None:
        with self.lock:
            self.connections += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "customers": dict(self.customers),
                "subscriptions": {k: self.subscription_view(k) for k in self.subscriptions},
                "leads": dict(self.leads),
                "events": dict(self.events),
                "portal_sessions": list(self.portal_sessions),
            }
