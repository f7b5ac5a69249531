"""Held links, confirmed by the customer's own mailbox or decided by an operator.

``linking`` holds a link it cannot make on its own (``linking.hold``); this module

- mails the Nomos customer's address a signed, expiring, single-use link naming the site
  account it would join, masked (``send_confirmation``; our receiver of
  ``customer_link_held``, and the button's "send again", rate limited by ``resend``);
- reads that link back (``read_token``) and links the claim's user when the person following
  it is signed in as that user (``confirm_by_mailbox``);
- lets an operator with the ``link_customer`` permission confirm or reject a claim
  (``confirm_by_operator``, ``reject``).

The confirmation link proves that the mailbox of the contract's owner agreed, and the session
proves which account: together they are the owner's own act. What remains is a victim who
confirms a phishing mail; the mail says plainly which account would get access.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlencode

from django.core import signing
from django.core.mail import EmailMessage
from django.core.mail.backends.smtp import EmailBackend as SMTPBackend
from django.db import transaction
from django.db.models import F
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from . import budget
from .addresses import mask_address, mask_name
from .conf import nomos_settings
from .linking import attach_user, user_address
from .models import ClaimStatus, NomosCustomer, NomosLinkClaim
from .signals import customer_link_held, customer_link_rejected

logger = logging.getLogger("nomos_billing.confirmation")

__all__ = [
    "MAX_SENDS",
    "RESEND_INTERVAL",
    "account_label",
    "confirm_by_mailbox",
    "confirm_by_operator",
    "confirmation_url",
    "held_context",
    "pending_claim",
    "read_token",
    "reject",
    "resend",
    "send_confirmation",
]

#: Our own salt: no value Django signed for another purpose passes as a confirmation.
SALT = "nomos_billing.confirmation.link"
#: "Send again" at most this often per claim, and this many mails per claim in all: the
#: button must not make the site a mail cannon against someone's inbox.
RESEND_INTERVAL = timedelta(minutes=5)
MAX_SENDS = 5

#: Seconds a confirmation mail may wait on an SMTP server that set no timeout of its own
#: (``EMAIL_TIMEOUT``, or a mailer's ``timeout`` option on Django 6.1), when no request budget
#: is open either (a management command): Django's SMTP backend alone waits for ever.
MAIL_TIMEOUT = 10.0

SUBJECT_TEMPLATE = "nomos_billing/email/link_confirmation_subject.txt"
BODY_TEMPLATE = "nomos_billing/email/link_confirmation_body.txt"

Outcome = Literal["linked", "wrong_user", "used", "taken"]
TokenProblem = Literal["invalid", "expired", "used"]


def account_label(user: Any) -> str:
    """How a page or mail names the site account a claim would join: its e-mail address or
    login name, masked."""
    address = user_address(user)
    if address:
        return mask_address(address)
    try:
        name = user.get_username()
    except AttributeError:
        name = ""
    return mask_name(name)


def site_url() -> str | None:
    """``SITE_URL``, else the current ``django.contrib.sites`` site over https; ``None`` when
    neither is there (W061)."""
    value = nomos_settings.SITE_URL
    if isinstance(value, str) and value:
        return value.rstrip("/")
    from django.apps import apps

    if apps.is_installed("django.contrib.sites"):
        from django.contrib.sites.models import Site

        return f"https://{Site.objects.get_current().domain}"
    return None


def _token(claim: NomosLinkClaim) -> str:
    return signing.dumps([claim.pk, claim.nonce], salt=SALT)


def confirmation_url(claim: NomosLinkClaim, base: str) -> str:
    # In the query, not the path: Django logs the path of every 4xx (django.request), and the
    # link must not land in the site's logs.
    return base + reverse("nomos_billing:link_confirm") + "?" + urlencode({"t": _token(claim)})


def send_confirmation(claim: NomosLinkClaim, *, base_url: str | None = None) -> bool:
    """Mail the claim's customer a fresh confirmation link; earlier links stop working.

    Returns False (and logs why) when there is no address to write to, no address of this
    site to link to, or the mail could not be sent; the claim stays pending either way and an
    operator can decide it in the admin.
    """
    customer = claim.customer
    to = customer.email
    if not to or "@" not in to:
        logger.warning(
            "held link of Nomos customer %s: the customer has no e-mail address; an operator "
            "must confirm or reject it",
            customer.customer_id,
        )
        return False
    base = base_url or site_url()
    if base is None:
        logger.error(
            "held link of Nomos customer %s: no confirmation mail, since neither "
            "NOMOS_BILLING['SITE_URL'] nor django.contrib.sites tells this site's address",
            customer.customer_id,
        )
        return False
    connection = _mail_connection(customer.customer_id)
    if connection is None:
        return False
    now = timezone.now()
    nonce = secrets.token_urlsafe(16)
    # Conditional: a claim decided meanwhile gets no mail.
    updated = NomosLinkClaim.objects.filter(pk=claim.pk, status=ClaimStatus.PENDING).update(
        nonce=nonce, sent_to=to[:254], sent_at=now, sends=F("sends") + 1
    )
    if not updated:
        return False
    # Two clicks on "send again" at once both count.
    claim.refresh_from_db(fields=["nonce", "sent_to", "sent_at", "sends"])
    context = {
        "url": confirmation_url(claim, base),
        "account": account_label(claim.user),
        "customer_id": customer.customer_id,
        "days": nomos_settings.LINK_CONFIRMATION_DAYS,
        "site_url": base,
    }
    subject = " ".join(render_to_string(SUBJECT_TEMPLATE, context).split())
    body = render_to_string(BODY_TEMPLATE, context)
    try:
        # An SMTP connection's timeout was cut to the budget (_mail_connection).
        connection.send_messages([EmailMessage(subject, body, None, [to])])
    except Exception as exc:  # any mail backend failure: the claim stays pending
        logger.error(
            "held link of Nomos customer %s: the confirmation mail could not be sent (%s)",
            customer.customer_id,
            type(exc).__name__,
        )
        return False
    logger.info("held link of Nomos customer %s: confirmation mailed", customer.customer_id)
    return True


def _mail_connection(customer_id: str) -> Any:
    """The site's default mailer; an SMTP one waits no longer than the request's budget.

    Django's SMTP backend has no timeout unless the site sets one, and a mail server that
    accepts and never answers would hold a click or a webhook past its budget (and a worker for
    ever). So its timeout is cut to what is left of the budget (``budget.remaining``), or to
    ``MAIL_TIMEOUT`` outside any budget when the site set none. ``None`` (logged) when the
    budget is already spent: the claim stays pending, "send again" or an operator decides it.
    """
    try:
        from django.core.mail import mailers  # type: ignore[attr-defined,unused-ignore]
    except ImportError:  # Django before 6.1
        from django.core.mail import get_connection

        connection = get_connection()
    else:
        connection = mailers.default
    if isinstance(connection, SMTPBackend):
        left = budget.remaining()
        if left is not None and left < budget.MIN_ATTEMPT:
            logger.error(
                "held link of Nomos customer %s: no time left in this request's budget for the "
                "confirmation mail; it can be sent again from the button or the admin",
                customer_id,
            )
            return None
        limits = [t for t in (connection.timeout, left) if t is not None]
        connection.timeout = min(limits) if limits else MAIL_TIMEOUT
    return connection


def _mail_held_claim(sender: Any, claim: NomosLinkClaim, **kwargs: Any) -> None:
    # After the commit: the claim must exist when its link is followed, and a rolled-back
    # delivery must not have mailed anyone. The commit may come after the budget's block has
    # ended (an outer transaction): the mail still keeps to the budget the hold happened in.
    left, held_at = budget.remaining(), time.monotonic()

    def send() -> None:
        rest = None if left is None else left - (time.monotonic() - held_at)
        with budget.limit(rest):
            send_confirmation(claim)

    transaction.on_commit(send)


customer_link_held.connect(_mail_held_claim, dispatch_uid="nomos_billing.confirmation")


def resend(claim: NomosLinkClaim, *, base_url: str | None = None) -> tuple[bool, int]:
    """Send the claim's confirmation again, if ``RESEND_INTERVAL`` has passed since the last
    one and fewer than ``MAX_SENDS`` went out. Returns ``(sent, retry_after_seconds)``;
    ``retry_after`` is 0 when waiting will not help (sent, or no sends left)."""
    if claim.sends >= MAX_SENDS:
        return False, 0
    if claim.sent_at is not None:
        wait = claim.sent_at + RESEND_INTERVAL - timezone.now()
        if wait > timedelta(0):
            return False, max(1, int(wait.total_seconds()) + 1)
    return send_confirmation(claim, base_url=base_url), 0


def read_token(token: str) -> tuple[NomosLinkClaim | None, TokenProblem | None]:
    """The claim a confirmation link names, or ``(None, why)``."""
    max_age = timedelta(days=nomos_settings.LINK_CONFIRMATION_DAYS)
    try:
        value = signing.loads(token, salt=SALT, max_age=max_age)
    except signing.SignatureExpired:
        return None, "expired"
    except signing.BadSignature:
        return None, "invalid"
    except ValueError:  # a signed value that is not our JSON: not one of ours
        return None, "invalid"
    if not (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], int)
        and isinstance(value[1], str)
        and value[1]
    ):
        return None, "invalid"
    claim = NomosLinkClaim.objects.select_related("customer", "user").filter(pk=value[0]).first()
    if claim is None:
        return None, "invalid"
    if claim.status != ClaimStatus.PENDING:
        return None, "used"
    if not secrets.compare_digest(claim.nonce, value[1]):
        # A newer mail replaced this one.
        return None, "expired"
    return claim, None


def _decide(
    claim: NomosLinkClaim, status: Literal["confirmed", "rejected"], decided_by: str
) -> bool:
    """Move a pending claim to ``status``; False when it was decided meanwhile."""
    now = timezone.now()
    updated = NomosLinkClaim.objects.filter(pk=claim.pk, status=ClaimStatus.PENDING).update(
        status=status, decided_at=now, decided_by=decided_by[:100]
    )
    if updated:
        claim.status, claim.decided_at, claim.decided_by = status, now, decided_by[:100]
    return bool(updated)


def _link(claim: NomosLinkClaim, linked_by: str, decided_by: str) -> Outcome:
    outcome = _link_in_transaction(claim, linked_by, decided_by)
    if outcome == "taken":
        # Rolled back: the claim is as pending as the database says.
        claim.refresh_from_db(fields=["status", "decided_at", "decided_by"])
    return outcome


def _link_in_transaction(claim: NomosLinkClaim, linked_by: str, decided_by: str) -> Outcome:
    with transaction.atomic():
        if not _decide(claim, "confirmed", decided_by):
            return "used"
        if not attach_user(claim.customer, claim.user, linked_by):
            # Linked meanwhile, or the user holds another customer: nothing was granted.
            transaction.set_rollback(True)
            return "taken"
        # The customer has its user now: the other claims on it are moot.
        NomosLinkClaim.objects.filter(
            customer_id=claim.customer_id, status=ClaimStatus.PENDING
        ).update(
            status=ClaimStatus.REJECTED,
            decided_at=claim.decided_at,
            decided_by="superseded",
        )
    return "linked"


def confirm_by_mailbox(claim: NomosLinkClaim, user: Any) -> Outcome:
    """The person who followed the mailed link, signed in as ``user``, confirms ``claim``."""
    if claim.status != ClaimStatus.PENDING:
        return "used"
    if user is None or user.pk != claim.user_id or not getattr(user, "is_active", False):
        logger.warning(
            "held link of Nomos customer %s followed while signed in as another account; "
            "nothing linked",
            claim.customer.customer_id,
        )
        return "wrong_user"
    outcome = _link(claim, "confirmed", "mailbox")
    logger.info(
        "held link of Nomos customer %s confirmed by its mailbox: %s",
        claim.customer.customer_id,
        outcome,
    )
    return outcome


def confirm_by_operator(claim: NomosLinkClaim, operator: Any) -> Outcome:
    """An operator (with ``link_customer``) links the claim's user; audited by the caller."""
    if claim.status != ClaimStatus.PENDING:
        return "used"
    if not getattr(claim.user, "is_active", False):
        return "wrong_user"
    return _link(claim, "admin", f"admin:{operator.pk}")


def reject(claim: NomosLinkClaim, operator: Any) -> bool:
    """An operator refuses the claim: nobody is linked, and the claim is never raised again."""
    if not _decide(claim, "rejected", f"admin:{operator.pk}"):
        return False
    customer_link_rejected.send(
        sender=NomosCustomer,
        customer=claim.customer,
        user=claim.user,
        claim=claim,
        rejected_by=claim.decided_by,
    )
    return True


#: Where ``pending_claim`` keeps its answer on the user object: several buttons on a page
#: ask once (as ``portal.customer_id_of`` does).
_CLAIM_ATTR = "_nomos_pending_claim"


def pending_claim(user: Any) -> NomosLinkClaim | None:
    """The newest pending claim of a signed-in ``user`` (who has no customer yet), for the
    button and the not-linked page; ``None`` for anyone else. One query per user object."""
    if user is None or not getattr(user, "is_authenticated", False) or user.pk is None:
        return None
    known = getattr(user, _CLAIM_ATTR, None)
    if known is None:
        claim = (
            NomosLinkClaim.objects.select_related("customer")
            .filter(user_id=user.pk, status=ClaimStatus.PENDING)
            .order_by("-created_at", "-pk")
            .first()
        )
        known = (claim,)
        setattr(user, _CLAIM_ATTR, known)
    return known[0]


def held_context(claim: NomosLinkClaim) -> dict[str, Any]:
    """What the button and our pages show of a held link: where the mail went (masked) and
    whether it can be sent again."""
    # Before the first mail left (it leaves when the transaction that held the link commits),
    # the customer's address is where it goes.
    address = claim.sent_to or claim.customer.email
    return {
        "sent_to": mask_address(address),
        "can_resend": bool(address) and claim.sends < MAX_SENDS,
        "resend_url": reverse("nomos_billing:link_resend"),
    }
