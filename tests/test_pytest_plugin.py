"""The fixtures a site developer gets from the installed package's pytest plugin."""

from __future__ import annotations

import pytest

from nomos_billing.client import get_client
from nomos_billing.conf import nomos_settings

pytestmark = pytest.mark.django_db(databases=[])


def test_nomos_sandbox_settings_points_the_client_at_a_live_sandbox(nomos_sandbox_settings):
    assert nomos_settings.API_BASE_URL == nomos_sandbox_settings.base_url
    link = get_client().create_magic_link("cus_sandbox_alice")
    assert link.startswith(nomos_sandbox_settings.portal_origin + "/auth/confirm?")
    assert nomos_sandbox_settings.count("POST /admin/magic_link") == 1
