from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class NomosBillingConfig(AppConfig):
    name = "nomos_billing"
    label = "nomos_billing"
    verbose_name = _("Nomos billing")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core.signals import request_finished, request_started

        from . import (
            checks,  # noqa: F401  (registers the system checks)
            confirmation,  # noqa: F401  (mails the customer of a held link)
            takeover,
        )

        # Stuck events are taken over while the site gets any traffic, not only deliveries.
        request_started.connect(takeover.before_request, dispatch_uid="nomos_billing.takeover")
        request_finished.connect(takeover.after_request, dispatch_uid="nomos_billing.takeover")
