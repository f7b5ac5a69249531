"""Deterministic demo data, so docs, demos and tests can name ids without looking them up."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .accounts import Accounts

ALICE = "cus_sandbox_alice"
ALICE_SUBSCRIPTION = "sub_sandbox_alice"
ACME = "cus_sandbox_acme"
ACME_CONSUMPTION = "sub_sandbox_acme_consumption"
ACME_FEED_IN = "sub_sandbox_acme_feed_in"
CAROL = "cus_sandbox_carol"  # a customer without any subscription
FEED_IN_PLAN = "pln_sandbox_feed_in"

_CREATED = "2026-01-05T10:00:00.000Z"


def seed(sb: Accounts) -> None:
    sb.add_customer("alice@example.com", "Alice", "Example", id=ALICE, created_at=_CREATED)
    # No seeded subscription names a user: a bare id in metadata would link whoever holds
    # that id on the site (often the first superuser). The demo links alice the way
    # production does, through a lead or a signed reference.
    sb.add_subscription(
        ALICE,
        status="active",
        metadata={"campaign": "sandbox-seed"},
        id=ALICE_SUBSCRIPTION,
        created_at=_CREATED,
    )
    sb.add_customer(
        "energy@acme.example.com",
        "Bob",
        "Builder",
        type="company",
        id=ACME,
        company_name="Acme Energie GmbH",
        created_at=_CREATED,
    )
    sb.add_subscription(
        ACME, status="active", id=ACME_CONSUMPTION, estimated_usage=42000, created_at=_CREATED
    )
    sb.add_subscription(
        ACME,
        status="pending",
        type="feed_in",
        plan=FEED_IN_PLAN,
        id=ACME_FEED_IN,
        estimated_usage=9000,
        created_at=_CREATED,
    )
    sb.add_customer("carol@example.com", "Carol", "Example", id=CAROL, created_at=_CREATED)
