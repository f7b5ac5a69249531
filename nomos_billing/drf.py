"""The portal link for apps behind the site's own API (``pip install nomos-billing[drf]``).

``PortalLinkView`` is ``portal/link/`` as a Django REST framework view: ``POST`` answers
``{"url": ...}`` for ``request.user``, authenticated and permitted the way the site's API is
(``authentication_classes``, ``permission_classes`` and ``throttle_classes`` are DRF's
settings unless the site sets them), so a native app with token or JWT authentication needs
neither a session nor a CSRF token. A signed-in user is always required on top of the site's
permissions: a link belongs to somebody. The per-user ``RATE_LIMITS["portal"]`` counts these
requests together with the portal button's.

Errors are the JSON endpoint's (``views.json_portal_error``): 404 ``not_linked``, 429
``rate_limited`` and 503 ``unavailable`` with ``Retry-After`` for an outage, 503 without it for
a setting only a person can fix. Every answer is ``no-store``: a link is a single-use credential.

    # urls.py
    from nomos_billing.drf import PortalLinkView

    path("api/portal-link/", PortalLinkView.as_view())
"""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError
from django.http import HttpResponseBase
from django.utils.cache import add_never_cache_headers
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import ratelimit
from .exceptions import NomosError
from .pages import click_budget
from .portal import mint_portal_link
from .views import json_database_outage, json_portal_error

__all__ = ["PortalLinkView"]


class PortalLinkView(APIView):
    """``POST`` (optional ``next``: a portal path) -> ``{"url": ...}`` for ``request.user``."""

    http_method_names = ["post", "options"]

    def get_permissions(self) -> list[BasePermission]:
        # The site's own permissions (DRF's DEFAULT_PERMISSION_CLASSES unless overridden) may
        # well be AllowAny; a link is still only ever made for a signed-in user.
        return [*super().get_permissions(), IsAuthenticated()]

    def post(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponseBase:
        # Read first: a body DRF cannot parse is its 400, and counts against no limit.
        page = _next(request)
        try:
            ratelimit.hit(request.user, "portal")
            with click_budget():
                link = mint_portal_link(request.user, next=page)
        except NomosError as exc:
            return json_portal_error(exc, request.user)
        return Response({"url": link})

    def handle_exception(self, exc: Exception) -> HttpResponseBase:
        # The token or session lookup failing with the database: an outage (503), not a 500.
        if isinstance(exc, DatabaseError):
            return json_database_outage()
        return super().handle_exception(exc)

    def finalize_response(
        self, request: Request, response: HttpResponseBase, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        response = super().finalize_response(request, response, *args, **kwargs)
        add_never_cache_headers(response)
        return response


def _next(request: Request) -> str | None:
    data = request.data
    value = data.get("next") if hasattr(data, "get") else None
    return value if isinstance(value, str) else None
