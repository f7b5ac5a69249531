"""Link by an address django-allauth has verified (``pip install nomos-billing[allauth]``).

``by_verified_email`` is the safe form of e-mail linking for a site on django-allauth: list it in
``USER_RESOLVERS`` instead of switching on ``LINK_BY_EMAIL``. It trusts only an address allauth
has verified *and* the user made primary (``allauth.account.models.EmailAddress``), compared
like every rule of ours that links by address (``addresses.same_address``): plain ASCII, equal
after ASCII lower-casing, decided in Python. The database only narrows the candidates, so no
database's Unicode case folding (a dotless i, a Kelvin sign, a long s) makes a look-alike
address someone else's. Exactly one active user, or nobody.

An address someone merely typed in at sign-up proves nothing (anyone can type a customer's
address); a verified one proves the user reads that mailbox, which is what Nomos' customer
record names.
"""

from __future__ import annotations

import logging
from typing import Any

from .addresses import normalized_address, same_address
from .linking import EMAIL_CANDIDATES, LinkRequest

try:
    from allauth.account.models import EmailAddress
except RuntimeError as exc:
    # Installed but not in INSTALLED_APPS: Django refuses the model. As an ImportError the
    # USER_RESOLVERS system check (E010) names the setting to fix instead of failing at a webhook.
    raise ImportError(
        "nomos_billing.allauth needs 'allauth' and 'allauth.account' in INSTALLED_APPS"
    ) from exc

__all__ = ["by_verified_email"]

logger = logging.getLogger("nomos_billing.linking")


def by_verified_email(link: LinkRequest) -> Any:
    """The one active user whose primary, verified allauth address is the customer's."""
    address = normalized_address(link.customer.email)
    if address is None:
        return None
    candidates = list(
        EmailAddress.objects.select_related("user")
        .filter(email__iexact=address, verified=True, primary=True, user__is_active=True)
        .order_by("pk")[: EMAIL_CANDIDATES + 1]
    )
    if len(candidates) > EMAIL_CANDIDATES:
        logger.warning(
            "Nomos customer %s: more than %d verified addresses match its e-mail address "
            "apart from case; not linked by allauth address",
            link.customer.customer_id,
            EMAIL_CANDIDATES,
        )
        return None
    users = {row.user_id: row.user for row in candidates if same_address(row.email, address)}
    return next(iter(users.values())) if len(users) == 1 else None
