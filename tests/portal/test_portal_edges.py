"""``portal`` on inputs the view never sends: odd host lists, non-ASCII links, user objects
that are not the user model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from nomos_billing.portal import get_customer, is_allowed_link

pytestmark = pytest.mark.django_db

PRODUCTION = {"API_BASE_URL": "https://api.nomos.energy"}


def test_entries_of_portal_hosts_that_are_not_host_names_are_skipped(settings):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, **PRODUCTION,
                              "PORTAL_HOSTS": [None, "", 42, "Portal.Example.COM"]}
    assert is_allowed_link("https://portal.example.com/auth") is True
    assert is_allowed_link("https://brand.customerportal.energy/auth") is False


@pytest.mark.parametrize("link", ["https://brand.customerportal.energy/\u00e4",
                                  "https://br\u00e4nd.customerportal.energy/"])
def test_a_link_with_non_ascii_characters_is_refused(settings, link):
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, **PRODUCTION}
    assert is_allowed_link(link) is False


def test_an_object_without_is_authenticated_has_no_customer():
    # A token-auth stand-in that is not the user model and says nothing about authentication.
    assert get_customer(SimpleNamespace(pk=1, nomos_customer="not a customer")) is None
