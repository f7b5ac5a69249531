"""Who is this Nomos customer on our site? The one place that decides.

Resolvers answer in the order of ``USER_RESOLVERS``; the first that returns a user wins. A
resolver is any callable ``resolver(link: LinkRequest) -> user | None``; sites add their own by
dotted path. The built-in ones, in the default order, and what each trusts:

- ``by_lead``: a lead *this site* created for a user (a ``NomosLead`` row) converted into the
  subscription. Trusts only our own database and the lead id Nomos reports.
- ``by_metadata``: the subscription's ``metadata[METADATA_USER_KEY]`` holds a *signed user
  reference* (``user_reference``). Subscription metadata can be written by anyone through the
  hosted checkout's URL, so a bare user id there proves nothing; only a value signed with our
  ``SECRET_KEY`` (or one in ``SECRET_KEY_FALLBACKS``) names a user.
- ``by_email``: off unless ``LINK_BY_EMAIL``; trusts that the site verifies e-mail addresses,
  and matches only the same plain ASCII address (``addresses.same_address``).

A lead or a signed reference proves who *handed out* a checkout link, not who signed the
contract: a link forwarded to someone else (phishing) would put that person's contract into the
sender's account. So those two rules are bound to the address (``BIND_LINKS_TO_EMAIL``): the
customer is linked at once only when its Nomos e-mail address is the user's; otherwise the link
is *held* (``confirmation.hold``), nobody is linked, and the customer's own mailbox or an
operator decides.

``link_customer`` never moves a customer that is already linked, and never gives a user a
second customer. Only a confirmation and the admin's explicit actions (behind the
``link_customer`` permission) change a link otherwise (``attach_user`` / ``detach_user``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from django.contrib.auth import get_user_model
from django.core import signing
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import IntegrityError, transaction
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.module_loading import import_string

from .addresses import normalized_address, same_address
from .conf import nomos_settings
from .models import NomosCustomer, NomosLead, NomosLinkClaim
from .signals import customer_link_held, customer_linked, customer_unlinked

logger = logging.getLogger("nomos_billing.linking")

#: Our own salt: a value Django signed for another purpose (a session, a password reset) never
#: passes as a user reference, and ours passes nowhere else.
REFERENCE_SALT = "nomos_billing.linking.user_reference"

#: ``<pk>:<signature>``: the pk as ``str(user.pk)`` writes it (ASCII letters, digits, ``-``
#: and ``_``; covers integer, UUID and slug keys) and Django's URL-safe base64 HMAC-SHA256
#: (43 characters). Anything else is not a value we produced: no whitespace, no sign, no
#: non-ASCII digits, nothing to normalise.
_REFERENCE = re.compile(r"(?P<pk>[A-Za-z0-9_-]{1,64}):(?P<sig>[A-Za-z0-9_-]{43})", re.ASCII)


def _signer() -> signing.Signer:
    # Built per call: SECRET_KEY and SECRET_KEY_FALLBACKS are read now, so a key rotation (or
    # override_settings in tests) takes effect without a restart of anything of ours.
    return signing.Signer(salt=REFERENCE_SALT)


def user_reference(user: Any) -> str:
    """A value naming ``user`` that only this site can produce, for Nomos metadata.

    About 45 characters for an integer key, URL-safe. It does not expire: a checkout may be
    finished weeks after the link was handed out. Rotating ``SECRET_KEY`` (old key moved to
    ``SECRET_KEY_FALLBACKS``) keeps existing references valid until the fallback is removed.
    """
    if user is None or getattr(user, "pk", None) is None:
        raise ValueError("user_reference needs a saved user")
    value = _signer().sign(str(user.pk))
    if not _REFERENCE.fullmatch(value):
        raise ValueError("this user model's primary key cannot be used in a user reference")
    return value


def _reference_pk(value: Any) -> tuple[str | None, str]:
    """``(pk, "")`` for a reference we signed, else ``(None, reason)``; the reason never
    contains the value."""
    if not isinstance(value, str):
        return None, "not a string"
    if not _REFERENCE.fullmatch(value):
        return None, "not a signed user reference"
    try:
        pk = _signer().unsign(value)
    except signing.BadSignature:
        return None, "bad signature"
    return pk, ""


def _active_user(pk: str) -> tuple[Any, str]:
    User = get_user_model()  # noqa: N806
    try:
        user = User._default_manager.filter(pk=pk).first()
    except (ValueError, TypeError, ValidationError):
        return None, "names no user"
    if user is None:
        return None, "names no user"
    # Canonical: the pk we signed must read back exactly as the user's pk writes itself.
    if str(user.pk) != pk:
        return None, "names no user"
    if not getattr(user, "is_active", True):
        return None, "names an inactive user"
    return user, ""


def _resolve(value: Any) -> tuple[Any, str]:
    pk, reason = _reference_pk(value)
    if pk is None:
        return None, reason
    return _active_user(pk)


def resolve_reference(value: Any) -> Any:
    """The active user a ``user_reference`` value names, or None for anything else (a bare
    id, an edited or foreign-signed value, an inactive or deleted user)."""
    return _resolve(value)[0]


def checkout_url(user: Any, *, zip: str | None = None, usage: int | str | None = None) -> str:
    """The plan's hosted checkout (``CHECKOUT_URL``) pre-filled for ``user``.

    The signed reference goes into ``metadata.<METADATA_USER_KEY>``, which Nomos copies onto
    the subscription; ``by_metadata`` then links the new customer to ``user``. Someone who
    edits the URL gets a customer linked to nobody.
    """
    base = nomos_settings.CHECKOUT_URL
    if not isinstance(base, str) or not base:
        raise ImproperlyConfigured("NOMOS_BILLING['CHECKOUT_URL'] is not set")
    parts = urlsplit(base)
    params: list[tuple[str, str]] = []
    if zip is not None and str(zip) != "":
        params.append(("zip", str(zip)))
    if usage is not None and str(usage) != "":
        params.append(("usage", str(usage)))
    params.append((f"metadata.{nomos_settings.METADATA_USER_KEY}", user_reference(user)))
    # A query already in the setting (e.g. a campaign tag) is kept in front of ours.
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", query, ""))


def customer_relation(user: Any) -> Any:
    """The reverse one-to-one (``nomos_customer``) of a signed-in user of the site's user model;
    ``None`` for anonymous users and for stand-ins that are not that model (token auth).
    ``__class__``, not ``type()``: request.user is a SimpleLazyObject."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    try:
        return user.__class__.nomos_customer.related
    except AttributeError:
        return None


# -- resolvers ----------------------------------------------------------------------------


@dataclass
class LinkRequest:
    """What a resolver may look at: our customer row, the Nomos subscription as Nomos returned
    it (``None`` when linking from a customer alone), and the lead id of the event, if any."""

    customer: NomosCustomer
    subscription: dict[str, Any] | None = None
    lead_id: str | None = None


def by_metadata(link: LinkRequest) -> Any:
    """The subscription's ``metadata[METADATA_USER_KEY]`` is a valid ``user_reference``."""
    metadata = (link.subscription or {}).get("metadata") or {}
    if not isinstance(metadata, dict):
        return None
    key = nomos_settings.METADATA_USER_KEY
    if key not in metadata:
        return None
    user, reason = _resolve(metadata[key])
    if user is None:
        # The value itself is never logged: it may carry a valid signature for someone else.
        logger.info(
            "Nomos customer %s: metadata %r is %s; not linked by metadata",
            link.customer.customer_id,
            key,
            reason,
        )
    return user


def by_lead(link: LinkRequest) -> Any:
    """A lead this app created for a user (``NomosLead``) turned into this subscription."""
    lead_id = link.lead_id or (link.subscription or {}).get("lead")
    if not lead_id or not isinstance(lead_id, str):
        return None
    lead = NomosLead.objects.select_related("user").filter(lead_id=lead_id).first()
    if lead is None or not getattr(lead.user, "is_active", True):
        return None
    return lead.user


#: How many accounts may share an address (ignoring case) before ``by_email`` gives up: more
#: than a handful are look-alikes made on purpose, and a link must never be a guess.
EMAIL_CANDIDATES = 10


def by_email(link: LinkRequest) -> Any:
    """Off unless ``LINK_BY_EMAIL``: the one active user with the customer's e-mail address.

    Unverified addresses make this an account takeover (sign up with the victim's address,
    get their portal); the W002 system check says so. Only the same plain ASCII address
    matches (``addresses.same_address``): the database narrows the candidates, Python decides,
    so no database's Unicode case folding (dotless i = ``i``, Kelvin sign = ``k``) makes two
    addresses one.
    """
    if not nomos_settings.LINK_BY_EMAIL:
        return None
    address = normalized_address(link.customer.email)
    if address is None:
        return None
    User = get_user_model()  # noqa: N806
    field_name = User.get_email_field_name()
    candidates = list(
        User._default_manager.annotate(_nomos_address=Lower(field_name)).filter(
            _nomos_address=address, is_active=True
        )[: EMAIL_CANDIDATES + 1]
    )
    if len(candidates) > EMAIL_CANDIDATES:
        logger.warning(
            "Nomos customer %s: more than %d accounts share its e-mail address apart from "
            "case; not linked by e-mail",
            link.customer.customer_id,
            EMAIL_CANDIDATES,
        )
        return None
    matches = [u for u in candidates if same_address(getattr(u, field_name, None), address)]
    return matches[0] if len(matches) == 1 else None


def get_resolvers() -> list[tuple[str, Any]]:
    return [(path, import_string(path)) for path in nomos_settings.USER_RESOLVERS]


def resolve_user(
    link: LinkRequest, resolvers: list[tuple[str, Any]] | None = None
) -> tuple[Any, str] | tuple[None, None]:
    """The first user a resolver finds, and that resolver's name. ``resolvers``: those of
    ``get_resolvers()``, read once by a caller that links many customers (a sync's page)."""
    for path, resolver in get_resolvers() if resolvers is None else resolvers:
        user = resolver(link)
        if user is not None:
            return user, path.rsplit(".", 1)[-1]
    return None, None


#: The rules that name a user by something that user can hand to someone else (a checkout
#: link): what they find is linked at once only under the address binding.
BOUND_RULES = frozenset({"by_lead", "by_metadata"})


def user_address(user: Any) -> str:
    """The user's e-mail address as the user model names its field ('' when it has none)."""
    try:
        field_name = user.get_email_field_name()
    except AttributeError:
        field_name = "email"
    value = getattr(user, field_name, "")
    return value if isinstance(value, str) else ""


def is_bound(rule: str) -> bool:
    """True when what ``rule`` found must carry the user's own address to be linked at once."""
    return rule in BOUND_RULES and nomos_settings.BIND_LINKS_TO_EMAIL


def link_customer(link: LinkRequest, *, resolvers: list[tuple[str, Any]] | None = None) -> bool:
    """Link ``link.customer`` to the user the resolvers find. Returns True if it was linked now.

    A find by a bound rule (lead, signed reference) whose customer has another address than
    the user is held for confirmation instead (``confirmation.hold``) and returns False. An
    already linked customer stays with its user, and a user already holding another customer
    is not given a second one (one-to-one); both are logged for an operator. ``resolvers``:
    as ``resolve_user``'s.
    """
    customer = link.customer
    if customer.user_id is not None:
        return False
    user, resolver = resolve_user(link, resolvers)
    if user is None:
        log_not_linked(customer.customer_id)
        return False
    rule = resolver or "resolver"
    if is_bound(rule) and not same_address(customer.email, user_address(user)):
        hold(customer, user, rule)
        return False
    return attach_user(customer, user, rule)


def log_not_linked(customer_id: str) -> None:
    """What ``link_customer`` logs when no resolver found a user for the customer."""
    logger.info("Nomos customer %s could not be linked to a user", customer_id)


def hold(customer: NomosCustomer, user: Any, rule: str) -> bool:
    """Store a pending claim of ``customer`` for ``user`` and announce it
    (``customer_link_held``; our receiver mails the customer, ``confirmation.py``). Returns True
    when the claim is new: a claim is raised once per customer and user, whatever became of
    it, so redeliveries and re-syncs neither mail again nor revive a rejected claim."""
    if NomosCustomer.objects.filter(user=user).exists():
        logger.warning(
            "Nomos customer %s resolves (%s) to user %s, who is already linked to another "
            "customer; not held",
            customer.customer_id,
            rule,
            user.pk,
        )
        return False
    try:
        with transaction.atomic():
            claim, created = NomosLinkClaim.objects.get_or_create(
                customer=customer, user=user, defaults={"rule": rule}
            )
    except IntegrityError:
        # A concurrent delivery raised the same claim first.
        return False
    if not created:
        return False
    logger.warning(
        "Nomos customer %s found %s for user %s, whose e-mail address is not the customer's: "
        "link held until the customer's mailbox or an operator confirms it",
        customer.customer_id,
        rule,
        user.pk,
    )
    customer_link_held.send(
        sender=NomosCustomer, customer=customer, user=user, rule=rule, claim=claim
    )
    return True


def attach_user(customer: NomosCustomer, user: Any, linked_by: str) -> bool:
    """Set ``customer.user`` if the customer is unlinked and the user holds no other customer."""
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
            "customer; left unlinked",
            customer.customer_id,
            user.pk,
        )
        return False
    if not updated:
        return False
    customer.user = user
    customer.linked_by = linked_by
    customer.linked_at = now
    logger.info(
        "Nomos customer %s linked to user %s (%s)", customer.customer_id, user.pk, linked_by
    )
    customer_linked.send(sender=NomosCustomer, customer=customer, user=user, resolver=linked_by)
    return True


def detach_user(customer: NomosCustomer, unlinked_by: str) -> Any:
    """Unlink ``customer``; returns the user it was linked to, or None if it was not linked.

    Conditional on the user we read, so a concurrent relink is not undone by mistake.
    """
    user_id = customer.user_id
    if user_id is None:
        return None
    user = customer.user
    now = timezone.now()
    updated = NomosCustomer.objects.filter(pk=customer.pk, user_id=user_id).update(
        user=None, linked_by="", linked_at=None, updated_at=now
    )
    if not updated:
        return None
    customer.user = None
    customer.linked_by = ""
    customer.linked_at = None
    logger.info(
        "Nomos customer %s unlinked from user %s (%s)", customer.customer_id, user_id, unlinked_by
    )
    customer_unlinked.send(
        sender=NomosCustomer, customer=customer, user=user, unlinked_by=unlinked_by
    )
    return user
