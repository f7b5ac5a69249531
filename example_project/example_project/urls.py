from __future__ import annotations

from demo_app import views
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("i18n/", include("django.conf.urls.i18n")),
    # Nomos posts webhooks to /nomos/webhook/; the portal button goes through /nomos/portal/.
    path("nomos/", include("nomos_billing.urls")),
]
