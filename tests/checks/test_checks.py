"""One test per system check id, plus: ids are unique, and a bare project is explained."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from nomos_billing import checks, checks_deploy, checks_rules, checks_secrets
from nomos_billing.checks import check_settings
from nomos_billing.checks_deploy import check_deploy
from nomos_billing.sandbox import pytest_plugin

GOOD = {
    "CLIENT_ID": "id",
    "CLIENT_SECRET": "secret",
    "WEBHOOK_SECRETS": ["whsec_0123456789abcdef"],
    "SITE_URL": "https://example.com",
}
LONG = "whsec_0123456789abcdef"


def ids(settings, value, **extra) -> set[str]:
    settings.NOMOS_BILLING = value
    for key, v in extra.items():
        setattr(settings, key, v)
    return {m.id for m in check_settings()}


def test_check_ids_are_unique_and_stable():
    modules = (checks, checks_deploy, checks_rules, checks_secrets)
    values = [v for module in modules for k, v in vars(module).items()
              if re.fullmatch(r"[EW]_[A-Z_]+", k)]
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
        ({**GOOD, "USER_RESOLVERS": "nomos_billing.linking.by_metadata"}, "nomos_billing.E010"),
        ({**GOOD, "PORTAL_NEXT_PREFIXES": ["invoices"]}, "nomos_billing.E011"),
        ({**GOOD, "EVENT_RETENTION_DAYS": 1}, "nomos_billing.E012"),
        ({**GOOD, "PORTAL_HOSTS": "portal.example"}, "nomos_billing.E013"),
        ({**GOOD, "MAX_RETRIES": -1}, "nomos_billing.E014"),
        ({**GOOD, "LINK_BY_EMAIL": True}, "nomos_billing.W002"),
        ({**GOOD, "CLIENT_SECERT": "typo"}, "nomos_billing.W003"),
        ({**GOOD, "API_VERSION": "2025-01-01.old"}, "nomos_billing.W004"),
        ({**GOOD, "LINK_CONFIRMATION_DAYS": 0}, "nomos_billing.E060"),
        ({**GOOD, "LINK_CONFIRMATION_DAYS": "7"}, "nomos_billing.E060"),
        ({**GOOD, "SITE_URL": "example.com"}, "nomos_billing.E061"),
        ({**GOOD, "SITE_URL": 42}, "nomos_billing.E061"),
        ({**GOOD, "BIND_LINKS_TO_EMAIL": False}, "nomos_billing.W060"),
        ({**GOOD, "BIND_LINKS_TO_EMAIL": "no"}, "nomos_billing.E015"),  # refused: True holds
    ],
)
def test_each_wrong_setting_has_its_check_id(settings, value, expected):
    assert expected in ids(settings, value)


def test_no_site_address_for_confirmation_mails_warns_unless_sites_is_installed(settings):
    without = {k: v for k, v in GOOD.items() if k != "SITE_URL"}
    assert "nomos_billing.W061" in ids(settings, without)
    settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, "django.contrib.sites"]
    assert "nomos_billing.W061" not in ids(settings, without)


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


# -- webhook secrets, checked like passwords -------------------------------------------------


def messages(settings, value, check=check_settings, **extra):
    settings.NOMOS_BILLING = value
    for key, v in extra.items():
        setattr(settings, key, v)
    return check()


@pytest.mark.parametrize(
    ("secrets", "position"),
    [
        ([" "], 1),
        ([""], 1),
        ([LONG, "  \t"], 2),
        (["whsec_short"], 1),
        ([LONG, "whsec_short"], 2),
        (f"{LONG}, ", 2),  # the "whsec_new, " from the environment
        (f"{LONG},,{LONG}", 2),
        ([f"{LONG}, "], 2),  # a comma string inside the list
    ],
    ids=["space", "empty", "tab", "short", "short-second", "comma-string-trailing",
         "comma-string-doubled", "comma-in-list"],
)
def test_a_blank_or_short_webhook_secret_is_E070_by_position(settings, secrets, position):
    found = [m for m in messages(settings, {**GOOD, "WEBHOOK_SECRETS": secrets})
             if m.id == "nomos_billing.E070"]
    assert [m.msg.split(" entry ")[1].split(" ")[0] for m in found] == [str(position)]
    assert found[0].is_serious()
    assert "whsec_short" not in found[0].msg + found[0].hint  # never printed


def test_only_blank_secrets_are_E002_as_well(settings):
    assert {"nomos_billing.E002", "nomos_billing.E070"} <= ids(
        settings, {**GOOD, "WEBHOOK_SECRETS": " , "})


def test_a_short_secret_for_a_loopback_sandbox_is_accepted(settings):
    # The README's and the demo's development setup must pass `check` with no issues;
    # check --deploy refuses the loopback API itself in production (E071).
    value = {**GOOD, "API_BASE_URL": "http://127.0.0.1:8765", "WEBHOOK_SECRETS": "whsec_sandbox"}
    assert not ids(settings, value) & {"nomos_billing.E002", "nomos_billing.E070"}
    assert "nomos_billing.E070" in ids(settings, {**value, "WEBHOOK_SECRETS": "whsec_sandbox, "})


def test_a_clean_comma_string_is_split_without_a_message(settings):
    other = "whsec_fedcba9876543210"
    value = {**GOOD, "WEBHOOK_SECRETS": f" {LONG} ,{other}"}
    assert not ids(settings, value) & {"nomos_billing.E002", "nomos_billing.E070"}


# -- check --deploy: the development defaults left in production -------------------------------

SANDBOX_DEFAULTS = {  # the README's Install block with no environment set
    "API_BASE_URL": "http://127.0.0.1:8765",
    "CLIENT_ID": "sandbox-client",
    "CLIENT_SECRET": "sandbox-secret",
    "WEBHOOK_SECRETS": "whsec_sandbox".split(","),
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({**GOOD, "API_BASE_URL": "http://127.0.0.1:8765"}, "nomos_billing.E071"),
        ({**GOOD, "API_BASE_URL": "http://localhost:8765/"}, "nomos_billing.E071"),
        ({**GOOD, "CLIENT_ID": "sandbox-client"}, "nomos_billing.E072"),
        ({**GOOD, "CLIENT_SECRET": "sandbox-secret"}, "nomos_billing.E072"),
        ({**GOOD, "WEBHOOK_SECRETS": [LONG, "whsec_sandbox"]}, "nomos_billing.E073"),
        ({**GOOD, "WEBHOOK_SECRETS": f"{LONG}, whsec_sandbox "}, "nomos_billing.E073"),
    ],
)
def test_deploy_check_refuses_the_sandbox_outside_debug(settings, value, expected):
    found = messages(settings, value, check_deploy, DEBUG=False)
    assert [m.id for m in found] == [expected]
    assert found[0].is_serious()
    assert "sandbox-secret" not in found[0].msg and "whsec_sandbox" not in found[0].msg
    assert messages(settings, value, check_deploy, DEBUG=True) == []


def test_deploy_check_passes_production_settings(settings):
    value = {**GOOD, "API_BASE_URL": "https://api.nomos.energy"}
    assert messages(settings, value, check_deploy, DEBUG=False) == []


@pytest.mark.django_db
def test_manage_py_check_deploy_refuses_the_readme_defaults(settings):
    settings.NOMOS_BILLING = SANDBOX_DEFAULTS
    settings.DEBUG = False
    call_command("check", stdout=StringIO(), stderr=StringIO())  # development: passes
    with pytest.raises(SystemCheckError) as excinfo:
        call_command("check", "--deploy", stdout=StringIO(), stderr=StringIO())
    text = str(excinfo.value)
    for check_id in ("nomos_billing.E071", "nomos_billing.E072", "nomos_billing.E073"):
        assert check_id in text
    assert "sandbox-secret" not in text


def test_the_refused_values_are_the_ones_the_sandbox_publishes():
    assert (checks_deploy.SANDBOX_CLIENT_ID, checks_deploy.SANDBOX_CLIENT_SECRET,
            checks_deploy.SANDBOX_WEBHOOK_SECRET) == (pytest_plugin.CLIENT_ID,
                                               pytest_plugin.CLIENT_SECRET,
                                               pytest_plugin.WEBHOOK_SECRET)
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
def test_wrong_rate_limits_are_E080(settings, value):
    assert "nomos_billing.E080" in ids(settings, {**GOOD, "RATE_LIMITS": value})


def test_rate_limits_accept_pairs_lists_and_none(settings):
    value = {"portal": (20, 60), "signup": [3, 3600], "recent_checkout": None}
    assert "nomos_billing.E080" not in ids(settings, {**GOOD, "RATE_LIMITS": value})


def test_rate_limit_cache_not_in_caches_is_E081(settings):
    assert "nomos_billing.E081" in ids(settings, {**GOOD, "RATE_LIMIT_CACHE": "nope"})


@pytest.mark.parametrize("value", [-1, "10", True, float("nan"), 10**9])
def test_wrong_api_rate_limit_is_E090(settings, value):
    assert "nomos_billing.E090" in ids(settings, {**GOOD, "API_RATE_LIMIT": value})


@pytest.mark.parametrize("value", [None, 0, 10, 2.5])
def test_api_rate_limit_accepts_a_rate_zero_and_none(settings, value):
    assert "nomos_billing.E090" not in ids(settings, {**GOOD, "API_RATE_LIMIT": value})


def test_local_memory_rate_limit_cache_warns_W080_outside_debug_only(settings):
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "shared": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "t"},
    }
    value = {**GOOD, "TOKEN_CACHE": "shared"}
    assert "nomos_billing.W080" in ids(settings, value, DEBUG=False)
    assert "nomos_billing.W080" not in ids(settings, value, DEBUG=True)
    assert "nomos_billing.W080" not in ids(settings, {**value, "RATE_LIMIT_CACHE": "shared"})
