"""Magic links (``POST /admin/magic_link``): single use, expiring, to the portal or, for a
customer without a subscription, to the hosted checkout."""

from __future__ import annotations

import secrets
import time
from typing import Any

from .hosts import checkout_url, portal_origin
from .stores import DEFAULT_PLAN, SandboxStores
from .traffic import RECORDS_SIZE


class MagicLinks(SandboxStores):
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

    def _forget_expired_links(self) -> None:
        # Called with the lock held; links are minted in time order, so the oldest come first.
        # Beyond RECORDS_SIZE unused links the oldest go too (a load test never redeems any).
        horizon = time.monotonic() - self.magic_link_ttl
        while self._magic_links:
            token_hash, entry = next(iter(self._magic_links.items()))
            if entry["created"] > horizon and len(self._magic_links) < RECORDS_SIZE:
                return
            del self._magic_links[token_hash]
