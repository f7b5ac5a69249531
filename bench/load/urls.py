from django.contrib import admin
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.urls import include, path


@login_required
def bare(request: HttpRequest) -> HttpResponse:
    """The floor a portal click is compared with: same middleware, session and user lookup."""
    return HttpResponse("ok")


urlpatterns = [
    path("admin/", admin.site.urls),
    path("bare/", bare),
    path("nomos/", include("nomos_billing.urls")),
]
