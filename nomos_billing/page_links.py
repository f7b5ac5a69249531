"""The resolvers' first question for the customers of a page (``nomos_sync``), asked without
them where the answer is known.

A first sync runs the resolvers for every new customer, and with the built-in ones and list
items (no lead, rarely a user reference in the metadata) almost none can find anyone: each
``link_customer`` built a request, read settings and called every resolver only to get None,
about a tenth of the sync's CPU (issue 22). ``miss_test`` asks, with the settings read once
for the page, what each built-in resolver checks before it reads anything: a request that
fails them all cannot be linked, and needs neither the resolvers nor its customer as an
object; any other goes to ``link_customer``. A site's own resolver may look at anything:
with one configured, every request goes the whole way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import linking
from .conf import nomos_settings

#: ``(subscription, lead id)``: True when no resolver can find a user for them.
MissTest = Callable[[dict[str, Any], str], bool]

_BUILT_IN = (linking.by_lead, linking.by_metadata, linking.by_email)


def _uses(resolvers: list[Any], resolver: Any) -> bool:
    # By identity: a site's resolver object need not be hashable or comparable.
    return any(used is resolver for used in resolvers)


def miss_test(resolvers: list[tuple[str, Any]]) -> MissTest | None:
    """The test for ``resolvers`` (those of ``linking.get_resolvers``), or None when one of
    them must always be asked: a site's own, or ``by_email`` while ``LINK_BY_EMAIL`` is on."""
    used = [resolver for _, resolver in resolvers]
    if not all(_uses(list(_BUILT_IN), resolver) for resolver in used):
        return None
    if _uses(used, linking.by_email) and nomos_settings.LINK_BY_EMAIL:
        return None
    by_lead = _uses(used, linking.by_lead)
    key = nomos_settings.METADATA_USER_KEY if _uses(used, linking.by_metadata) else None

    def misses(subscription: dict[str, Any], lead_id: str) -> bool:
        # by_lead: a lead id (the event's, else the subscription's) to look up.
        lead = lead_id or subscription.get("lead")
        if by_lead and lead and isinstance(lead, str):
            return False
        # by_metadata: the metadata holds the key, whatever its value (a bad one is logged).
        metadata = subscription.get("metadata") or {}
        return key is None or not isinstance(metadata, dict) or key not in metadata

    return misses
