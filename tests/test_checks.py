"""One test per system check id, plus: ids are unique, and a bare project is explained."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from nomos_billing import checks
from nomos_billing.checks import check_settings

GOOD = {
    "CLIENT_ID": "id",
    "CLIENT_SECRET": "secret",
    "WEBHOOK_SECRETS": ["whsec_1"],
}


def ids(settings, value, **extra) -> set[str]:
    settings.NOMOS_BILLING = value
    for key, v in extra.items():
        setattr(settings, key, v)
    return {m.id for m in check_settings()}


def test_check_ids_are_unique_and_stable():
    values = [v for k, v in vars(checks).items() if re.fullmatch(r"[EW]_[A-Z_]+", k)]
    assert len(values) == len(set(values))
    assert all(re.fullmatch(r"nomos_billing\.[EW]\d{3}", v) for v in values)


def test_good_settings_pass(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache",
                                   "LOCATION": "t"}}
    assert ids(settings, GOOD) == set()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({**GOOD, "CLIENT_ID": ""}, "nomos_billing.E001"),
        ({k: v for k, v in GOOD.items() if k != "CLIENT_SECRET"}, "nomos_billing.E001"),
        ({**GOOD, "WEBHOOK_SECRETS": []}, "nomos_billing.E002"),
        ({**GOOD, "WEBHOOK_SECRETS": [""]}, "nomos_billing.E002"),
        ({**GOOD, "WEBHOOK_SECRETS": 42}, "nomos_billing.E002"),
        ({**GOOD, "API_BASE_URL": "ftp://x"}, "nomos_billing.E004"),
        ({**GOOD, "API_BASE_URL": "http://api.nomos.energy"}, "nomos_billing.E004"),
        ({**GOOD, "TIMEOUT": 0}, "nomos_billing.E005"),
        ({**GOOD, "TIMEOUT": (3, 600)}, "nomos_billing.E005"),
        ({**GOOD, "TIMEOUT": "fast"}, "nomos_billing.E005"),
        ({**GOOD, "WEBHOOK_TOLERANCE": 0}, "nomos_billing.E006"),
        ({**GOOD, "TOKEN_CACHE": "nope"}, "nomos_billing.E007"),
        ({**GOOD, "TOKEN_REFRESH_MARGIN": 4000}, "nomos_billing.E008"),
        ({**GOOD, "WEBHOOK_MAX_BYTES": 10}, "nomos_billing.E009"),
        ({**GOOD, "USER_RESOLVERS": ["no.such.resolver"]}, "nomos_billing.E010"),
        ({**GOOD, "USER_RESOLVERS": "nomos_billing.resolvers.by_metadata"}, "nomos_billing.E010"),
        ({**GOOD, "PORTAL_NEXT_PREFIXES": ["invoices"]}, "nomos_billing.E011"),
        ({**GOOD, "EVENT_RETENTION_DAYS": 1}, "nomos_billing.E012"),
        ({**GOOD, "PORTAL_HOSTS": "portal.example"}, "nomos_billing.E013"),
        ({**GOOD, "MAX_RETRIES": -1}, "nomos_billing.E014"),
        ({**GOOD, "LINK_BY_EMAIL": True}, "nomos_billing.W002"),
        ({**GOOD, "CLIENT_SECERT": "typo"}, "nomos_billing.W003"),
        ({**GOOD, "API_VERSION": "2025-01-01.old"}, "nomos_billing.W004"),
    ],
)
def test_each_wrong_setting_has_its_check_id(settings, value, expected):
    assert expected in ids(settings, value)


def test_not_a_dict_is_E003(settings):
    assert ids(settings, ["CLIENT_ID"]) == {"nomos_billing.E003"}


def test_local_memory_token_cache_warns_outside_debug_only(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    assert "nomos_billing.W001" in ids(settings, GOOD, DEBUG=False)
    assert "nomos_billing.W001" not in ids(settings, GOOD, DEBUG=True)


def test_dummy_token_cache_warns(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}
    assert "nomos_billing.W001" in ids(settings, GOOD, DEBUG=False)


def test_plain_http_is_an_error_outside_debug_and_a_warning_in_debug(settings):
    value = {**GOOD, "API_BASE_URL": "http://nomos.internal"}
    assert "nomos_billing.E004" in ids(settings, value, DEBUG=False)
    assert ids(settings, value, DEBUG=True) & {"nomos_billing.E004", "nomos_billing.W005"} == {
        "nomos_billing.W005"
    }


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765", "http://localhost:8765", "http://[::1]:1"])
def test_plain_http_to_a_loopback_sandbox_is_fine(settings, url):
    assert not ids(settings, {**GOOD, "API_BASE_URL": url}) & {
        "nomos_billing.E004", "nomos_billing.W005"}


@pytest.mark.django_db
def test_manage_py_check_on_a_project_without_credentials_lists_ids_with_hints(settings):
    settings.NOMOS_BILLING = {}
    err = StringIO()
    with pytest.raises(SystemCheckError) as excinfo:
        call_command("check", stdout=StringIO(), stderr=err)
    text = str(excinfo.value)
    for check_id in ("nomos_billing.E001", "nomos_billing.E002"):
        assert check_id in text
    assert "HINT:" in text
    assert "CLIENT_SECRET" in text


@pytest.mark.parametrize(
    "value",
    [
        "10/m",
        {"portal": (0, 60)},
        {"portal": (10, 0)},
        {"portal": (10.5, 60)},
        {"portal": (True, 60)},
        {"portal": 10},
        {"portal": (10, 60, 1)},
        {"clicks": (10, 60)},
    ],
)
def test_wrong_rate_limits_are_E060(settings, value):
    assert "nomos_billing.E060" in ids(settings, {**GOOD, "RATE_LIMITS": value})


def test_rate_limits_accept_pairs_lists_and_none(settings):
    value = {"portal": (20, 60), "signup": [3, 3600], "recent_checkout": None}
    assert "nomos_billing.E060" not in ids(settings, {**GOOD, "RATE_LIMITS": value})


def test_rate_limit_cache_not_in_caches_is_E061(settings):
    assert "nomos_billing.E061" in ids(settings, {**GOOD, "RATE_LIMIT_CACHE": "nope"})


def test_local_memory_rate_limit_cache_warns_W060_outside_debug_only(settings):
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "shared": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "t"},
    }
    value = {**GOOD, "TOKEN_CACHE": "shared"}
    assert "nomos_billing.W060" in ids(settings, value, DEBUG=False)
    assert "nomos_billing.W060" not in ids(settings, value, DEBUG=True)
    assert "nomos_billing.W060" not in ids(settings, {**value, "RATE_LIMIT_CACHE": "shared"})
