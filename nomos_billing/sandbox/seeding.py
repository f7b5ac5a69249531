"""Many customers and subscriptions at once, for benchmarks and scale tests.

``seed_subscriptions(sandbox, 100_000)`` (or ``--seed-subscriptions 100000``, or
``POST /_sandbox/seed {"subscriptions": 100000}``) gives the sandbox that many customers with
one subscription each in a few seconds (about 3 s for 100,000 on a loaded 2-core machine): ids
are numbered instead of drawn from ``secrets``, and the items go into the sandbox's dicts under
one lock instead of one ``add_*`` call each. The data is deterministic (the same call on two
sandboxes gives the same items) and varied as a real account is: statuses, types, companies
and metadata alternate, and each item has its own ``created_at`` one second after the one
before, so lists have a stable newest-first order.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from . import shapes
from .stores import DEFAULT_PLAN

if TYPE_CHECKING:
    from .state import Sandbox

#: Seeded ids are ``cus_bulk_<n>`` and ``sub_bulk_<n>``, ``n`` zero-padded to this width.
PREFIX = "bulk_"
WIDTH = 9
#: The first seeded item's ``created_at``; the n-th is ``n`` seconds later (all before the demo
#: seed's items, so a bulk seed never pushes those off the first page).
EPOCH = datetime(2025, 1, 1, tzinfo=timezone.utc)
#: Ids keep their width up to this many.
MAX_COUNT = 10**WIDTH - 1

_STATUSES = ("active", "active", "active", "pending", "ended")


def seeded(sb: Sandbox) -> int:
    """How many subscriptions ``seed_subscriptions`` added so far."""
    with sb.lock:
        return sum(1 for sub_id in sb.subscriptions if sub_id.startswith("sub_" + PREFIX))


def seed_subscriptions(sb: Sandbox, total: int) -> int:
    """Make the sandbox hold ``total`` seeded customers with one subscription each, adding
    those earlier calls did not (a second call with the same ``total`` adds nothing, a
    larger one adds the difference); returns how many it added."""
    if not 0 <= total <= MAX_COUNT:
        raise ValueError(f"the number of seeded subscriptions must be 0 to {MAX_COUNT}")
    with sb.lock:
        first = seeded(sb)
        for n in range(first, total):
            number = str(n).zfill(WIDTH)
            created = shapes.iso(EPOCH + timedelta(seconds=n))
            company = n % 10 == 9
            customer = shapes.customer(
                id=f"cus_{PREFIX}{number}",
                email=f"bulk{number}@example.com",
                first_name="Bulk",
                last_name=f"Customer {n}",
                type="company" if company else "person",
                company_name=f"Bulk {n} GmbH" if company else None,
                created_at=created,
            )
            subscription = shapes.subscription(
                id=f"sub_{PREFIX}{number}",
                customer_id=customer["id"],
                plan=DEFAULT_PLAN,
                status=_STATUSES[n % len(_STATUSES)],
                type="feed_in" if n % 7 == 6 else "consumption",
                metadata={"seed": "bulk", "n": n} if n % 3 == 0 else None,
                estimated_usage=1500 + n % 4000,
                created_at=created,
            )
            sb.customers[customer["id"]] = customer
            sb.subscriptions[subscription["id"]] = subscription
        added = max(0, total - first)
        if added:
            sb.save_state()
        return added
