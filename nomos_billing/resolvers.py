"""Who is this Nomos customer on our site? Resolvers answer, in the order of
``USER_RESOLVERS``; the first that returns a user wins.

A resolver is any callable ``resolver(link: LinkRequest) -> user | None``. Sites add their own
by dotted path. ``link_customer`` never moves a customer that is already linked to one user
over to another one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from .conf import nomos_settings
from .signals import customer_linked

if TYPE_CHECKING:
    from .models import NomosCustomer

logger = logging.getLogger("nomos_billing.resolvers")


@dataclass
class LinkRequest:
    """What a resolver may look at: our customer row, the Nomos subscription as Nomos returned
    it (``None`` when linking from a customer alone), and the lead id of the event, if any."""

    customer: NomosCustomer
    subscription: dict[str, Any] | None = None
    lead_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def by_metadata(link: LinkRequest) -> Any:
    """The subscription's ``metadata[METADATA_USER_KEY]`` names our user's primary key."""
    metadata = (link.subscription or {}).get("metadata") or {}
    if not isinstance(metadata, dict):
        return None
    value = metadata.get(nomos_settings.METADATA_USER_KEY)
    # Only a string or an integer names a user; True would otherwise match pk=1.
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        return None
    User = get_user_model()  # noqa: N806
    try:
        return User._default_manager.filter(pk=value, is_active=True).first()
    except (ValueError, TypeError):
        return None
    except Exception:  # a malformed pk for this user model (e.g. UUIDs)
        logger.info("metadata user key %r is not a valid user id", value)
        return None


def by_lead(link: LinkRequest) -> Any:
    """A lead this app created for a user (``NomosLead``) turned into this subscription."""
    from .models import NomosLead

    lead_id = link.lead_id or (link.subscription or {}).get("lead")
    if not lead_id or not isinstance(lead_id, str):
        return None
    lead = NomosLead.objects.select_related("user").filter(lead_id=lead_id).first()
    if lead is None or not lead.user.is_active:
        return None
    return lead.user


def by_email(link: LinkRequest) -> Any:
    """Off unless ``LINK_BY_EMAIL``: the one active user with the customer's e-mail address.

    Unverified addresses make this an account takeover (sign up with the victim's address,
    get their portal); the W002 system check says so.
    """
    if not nomos_settings.LINK_BY_EMAIL or not link.customer.email:
        return None
    User = get_user_model()  # noqa: N806
    field_name = User.get_email_field_name()
    matches = list(
        User._default_manager.filter(
            **{f"{field_name}__iexact": link.customer.email, "is_active": True}
        )[:2]
    )
    return matches[0] if len(matches) == 1 else None


def get_resolvers() -> list[tuple[str, Any]]:
    return [(path, import_string(path)) for path in nomos_settings.USER_RESOLVERS]


def resolve_user(link: LinkRequest) -> tuple[Any, str] | tuple[None, None]:
    for path, resolver in get_resolvers():
        user = resolver(link)
        if user is not None:
            return user, path.rsplit(".", 1)[-1]
    return None, None


def link_customer(link: LinkRequest) -> bool:
    """Link ``link.customer`` to the user the resolvers find. Returns True if it was linked now.

    An already linked customer stays with its user, and a user already holding another
    customer is not given a second one (one-to-one); both are logged for an operator.
    """
    customer = link.customer
    if customer.user_id is not None:
        return False
    user, resolver = resolve_user(link)
    if user is None:
        logger.info("Nomos customer %s could not be linked to a user", customer.customer_id)
        return False
    return attach_user(customer, user, resolver or "resolver")


def attach_user(customer: NomosCustomer, user: Any, linked_by: str) -> bool:
    """Set ``customer.user`` if the customer is unlinked and the user holds no other customer."""
    from .models import NomosCustomer

    now = timezone.now()
    try:
        with transaction.atomic():
            taken = NomosCustomer.objects.filter(user=user).exclude(pk=customer.pk).exists()
            # Conditional update: a concurrent link by someone else is never overwritten.
            updated = not taken and NomosCustomer.objects.filter(
                pk=customer.pk, user__isnull=True
            ).update(user=user, linked_by=linked_by, linked_at=now, updated_at=now)
    except IntegrityError:
        # Another customer was linked to this user between our check and our update (the
        # one-to-one constraint decided).
        taken = True
    if taken:
        logger.warning(
            "Nomos customer %s resolves to user %s, who is already linked to another "
            "customer; left unlinked", customer.customer_id, user.pk,
        )
        return False
    if not updated:
        return False
    customer.user = user
    customer.linked_by = linked_by
    customer.linked_at = now
    logger.info("Nomos customer %s linked to user %s (%s)", customer.customer_id, user.pk,
                linked_by)
    customer_linked.send(sender=NomosCustomer, customer=customer, user=user, resolver=linked_by)
    return True
