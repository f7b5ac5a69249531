"""Kept so that settings naming ``nomos_billing.resolvers.by_metadata`` (and the other
resolvers) by dotted path go on working; the code lives in ``nomos_billing.linking``."""

from __future__ import annotations

from .linking import (
    LinkRequest,
    attach_user,
    by_email,
    by_lead,
    by_metadata,
    detach_user,
    get_resolvers,
    link_customer,
    resolve_user,
)

__all__ = [
    "LinkRequest",
    "attach_user",
    "by_email",
    "by_lead",
    "by_metadata",
    "detach_user",
    "get_resolvers",
    "link_customer",
    "resolve_user",
]
