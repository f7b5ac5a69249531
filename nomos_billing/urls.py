"""Include under a prefix of your choice: ``path("nomos/", include("nomos_billing.urls"))``."""

from __future__ import annotations

from django.urls import path

from . import confirmation_views, views, webhooks

app_name = "nomos_billing"

urlpatterns = [
    path("webhook/", webhooks.WebhookView.as_view(), name="webhook"),
    path("portal/", views.portal, name="portal"),
    path("portal/link/", views.portal_link, name="portal_link"),
    path("portal/start/", views.start, name="start"),
    path("link/confirm/", confirmation_views.link_confirm, name="link_confirm"),
    path("link/resend/", confirmation_views.link_resend, name="link_resend"),
]
