"""What we keep of Nomos: customers (linked to site users), their subscriptions, the leads we
created for users, and a log of webhook deliveries.

Nomos stays the source of truth; these rows are a cache filled from what Nomos says now
(webhooks fetch current state), plus the one thing Nomos cannot know: which site user a
customer is.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.fields.json import KeyTransform
from django.utils.translation import gettext_lazy as _

from . import lifecycle

#: Room for a subscription status Nomos adds later, stored as sent (``sync``).
STATUS_LENGTH = 64


class SubscriptionStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    ACTIVE = "active", _("Active")
    ENDED = "ended", _("Ended")


class NomosCustomer(models.Model):
    class Type(models.TextChoices):
        PERSON = "person", _("Person")
        COMPANY = "company", _("Company")

    # Nullable: a customer we cannot attribute yet is kept, not dropped, and linked later.
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="nomos_customer",
        verbose_name=_("user"),
    )
    customer_id = models.CharField(_("Nomos customer id"), max_length=64, unique=True)
    email = models.EmailField(_("e-mail"), blank=True)
    first_name = models.CharField(_("first name"), max_length=100, blank=True)
    last_name = models.CharField(_("last name"), max_length=100, blank=True)
    company_name = models.CharField(_("company name"), max_length=100, blank=True)
    type = models.CharField(_("type"), max_length=16, choices=Type.choices, default=Type.PERSON)
    # Which resolver linked the user (e.g. "metadata", "lead", "admin"), for the audit trail.
    linked_by = models.CharField(_("linked by"), max_length=100, blank=True)
    linked_at = models.DateTimeField(_("linked at"), null=True, blank=True)
    # The status of the newest subscription (by Nomos' creation time), kept by ``sync`` whenever
    # a subscription is stored or changes status, so the admin filters and sorts on a column
    # instead of running a subquery per customer. Empty: no subscription.
    latest_status = models.CharField(
        _("latest subscription status"),
        max_length=STATUS_LENGTH,
        choices=SubscriptionStatus.choices,
        blank=True,
        editable=False,
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("Nomos customer")
        verbose_name_plural = _("Nomos customers")
        ordering = ["-created_at"]
        # The admin's default ordering and its status filter.
        indexes = [
            models.Index(fields=["-created_at"], name="nomos_cus_created_idx"),
            models.Index(fields=["latest_status", "-created_at"], name="nomos_cus_latest_idx"),
        ]
        # A link grants access to a person's contract and bank details: "change" (which every
        # support role tends to get) is not enough to make or undo one by hand.
        permissions = [
            ("link_customer", _("Can link, unlink, confirm or reject links of Nomos customers")),
        ]

    def __str__(self) -> str:
        name = " ".join(p for p in (self.first_name, self.last_name) if p)
        return f"{self.customer_id} ({name or self.email or _('unnamed')})"

    @property
    def is_linked(self) -> bool:
        return self.user_id is not None


class NomosSubscription(models.Model):
    Status = SubscriptionStatus

    class Type(models.TextChoices):
        CONSUMPTION = "consumption", _("Consumption")
        FEED_IN = "feed_in", _("Feed-in")

    customer = models.ForeignKey(
        NomosCustomer,
        on_delete=models.CASCADE,
        related_name="subscriptions",
        verbose_name=_("customer"),
    )
    subscription_id = models.CharField(_("Nomos subscription id"), max_length=64, unique=True)
    # The choices are the statuses we know; one Nomos adds later is stored as sent.
    status = models.CharField(
        _("status"), max_length=STATUS_LENGTH, choices=Status.choices, blank=True
    )
    plan = models.CharField(_("plan"), max_length=64, blank=True)
    type = models.CharField(_("type"), max_length=16, choices=Type.choices, blank=True)
    number = models.CharField(_("number"), max_length=64, blank=True)
    start_at = models.DateTimeField(_("delivery start"), null=True, blank=True)
    end_at = models.DateTimeField(_("end"), null=True, blank=True)
    terminated_at = models.DateTimeField(_("terminated"), null=True, blank=True)
    metadata = models.JSONField(_("metadata"), default=dict, blank=True)
    lead_id = models.CharField(_("lead id"), max_length=64, blank=True)
    nomos_created_at = models.DateTimeField(_("created at Nomos"), null=True, blank=True)
    nomos_updated_at = models.DateTimeField(_("updated at Nomos"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("Nomos subscription")
        verbose_name_plural = _("Nomos subscriptions")
        ordering = ["-nomos_created_at", "-created_at"]
        indexes = [
            models.Index(fields=["status"], name="nomos_sub_status_idx"),
            # The default ordering, and "newest subscription of a customer" (latest_status).
            models.Index(fields=["-nomos_created_at", "-created_at"], name="nomos_sub_order_idx"),
            models.Index(
                fields=["customer", "-nomos_created_at", "-created_at"], name="nomos_sub_latest_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.subscription_id} ({self.status or '?'})"


class NomosLead(models.Model):
    """A checkout link we created for a site user, so that the subscription it turns into can be
    linked back to that user (the ``lead`` resolver)."""

    lead_id = models.CharField(_("Nomos lead id"), max_length=64, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="nomos_leads",
        verbose_name=_("user"),
    )
    plan = models.CharField(_("plan"), max_length=64, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("Nomos lead")
        verbose_name_plural = _("Nomos leads")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.lead_id


class ClaimStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    CONFIRMED = "confirmed", _("Confirmed")
    REJECTED = "rejected", _("Rejected")


class NomosLinkClaim(models.Model):
    """A link the resolvers found but did not make: held until the customer's mailbox (or an
    operator) confirms it.

    Held when a lead or a signed reference names a user whose e-mail address is not the Nomos
    customer's: the checkout link may have been handed to someone else (``linking``). One row
    per customer and user, whatever its outcome, so that a rejected claim is not raised again
    by the next delivery and a pending one is mailed once.
    """

    Status = ClaimStatus

    customer = models.ForeignKey(
        NomosCustomer,
        on_delete=models.CASCADE,
        related_name="link_claims",
        verbose_name=_("customer"),
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="nomos_link_claims",
        verbose_name=_("user"),
    )
    # The resolver that found the user (``by_lead``, ``by_metadata``...).
    rule = models.CharField(_("rule"), max_length=100)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.PENDING
    )
    # Changes with every confirmation mail, so that only the newest mail's link works.
    nonce = models.CharField(max_length=32, blank=True, editable=False)
    sent_to = models.EmailField(_("confirmation sent to"), blank=True)
    sent_at = models.DateTimeField(_("confirmation sent"), null=True, blank=True)
    sends = models.PositiveSmallIntegerField(_("confirmations sent"), default=0)
    decided_at = models.DateTimeField(_("decided"), null=True, blank=True)
    # "mailbox", or "admin:<pk>" for an operator.
    decided_by = models.CharField(_("decided by"), max_length=100, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("held link")
        verbose_name_plural = _("held links")
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["customer", "user"], name="nomos_claim_once"),
        ]
        indexes = [
            models.Index(fields=["user", "status"], name="nomos_claim_user_idx"),
            models.Index(fields=["status", "-created_at"], name="nomos_claim_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id} -> {self.user_id} ({self.status})"


class WebhookEvent(models.Model):
    """One delivered Nomos event; its states and the rules that move it: ``lifecycle``."""

    Status = lifecycle.Status

    # Unique: the database, not Python memory, is what makes processing exactly-once.
    event_id = models.CharField(_("event id"), max_length=64, unique=True)
    topic = models.CharField(_("topic"), max_length=64, db_index=True)
    payload = models.JSONField(_("payload"), default=dict)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.RECEIVED
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    last_error = models.TextField(_("last error"), blank=True)
    # Position of the matching secret in WEBHOOK_SECRETS (0 = newest): when no delivery uses an
    # old secret any more, it can be removed.
    secret_index = models.PositiveSmallIntegerField(_("secret index"), null=True, blank=True)
    deliveries = models.PositiveIntegerField(_("deliveries"), default=1)
    received_at = models.DateTimeField(_("received"), auto_now_add=True, db_index=True)
    claimed_at = models.DateTimeField(_("claimed"), null=True, blank=True)
    processed_at = models.DateTimeField(_("processed"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    objects = lifecycle.WebhookEventQuerySet.as_manager()

    class Meta:
        verbose_name = _("webhook event")
        verbose_name_plural = _("webhook events")
        ordering = ["-received_at"]
        indexes = [
            models.Index(fields=["status", "received_at"], name="nomos_evt_status_idx"),
            # The admin's topic filter in its default ordering.
            models.Index(fields=["topic", "received_at"], name="nomos_evt_topic_idx"),
            # The queued events of one subscription (``lifecycle.queued_for``, once per
            # event a worker takes): without it each look reads the whole backlog, so that
            # draining N queued events costs N^2 rows. Partial: only queued events are in it.
            models.Index(
                KeyTransform("subscription", KeyTransform("context", "payload")),
                condition=models.Q(status="received"),
                name="nomos_evt_waiting_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_id} {self.topic} ({self.status})"


class NomosSyncState(models.Model):
    """Where the catch-up (``nomos_sync --since auto``) stands: one row per kind of walk.

    ``watermark`` moves only when a walk finished completely: a walk that crashed or was
    refused leaves it, so the next run repeats that stretch instead of skipping it.
    """

    name = models.CharField(_("name"), max_length=32, unique=True)
    # Nomos' clock (its Date header) when the last complete walk started; the next walk asks
    # Nomos for everything updated since then, minus an overlap.
    watermark = models.DateTimeField(_("watermark"), null=True, blank=True)
    last_started_at = models.DateTimeField(_("last started"), null=True, blank=True)
    last_completed_at = models.DateTimeField(_("last completed"), null=True, blank=True)
    last_count = models.PositiveIntegerField(_("subscriptions in the last walk"), default=0)
    last_error = models.TextField(_("last error"), blank=True)

    class Meta:
        verbose_name = _("Nomos sync state")
        verbose_name_plural = _("Nomos sync states")

    def __str__(self) -> str:
        return f"{self.name}: {self.watermark or '-'}"
