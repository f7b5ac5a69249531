"""``nomos_settings`` and the settings table: typed values, a wrong value explained by its check
and replaced by the default at run time (never an exception), one log line per wrong value."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from nomos_billing import breaker, conf
from nomos_billing.checks import check_settings
from nomos_billing.client import NomosClient
from nomos_billing.conf import nomos_settings
from nomos_billing.settings_table import TABLE, Setting


def wrong_value(setting: Setting) -> Any:
    """A value of the wrong type for ``setting``: a numeric string for what is not a string
    (``"5"`` is the classic environment-variable slip), else a number."""
    try:
        setting.parse("5")
    except ValueError:
        return "5"
    return 42


def configure(settings: Any, **values: Any) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, **values}


@pytest.mark.parametrize("setting", TABLE, ids=[s.name for s in TABLE])
def test_a_wrong_type_is_the_keys_check_message_and_the_default_at_run_time(
    settings: Any, setting: Setting
) -> None:
    value = wrong_value(setting)
    configure(settings, **{setting.name: value})
    found = [m for m in check_settings() if m.id == setting.check_id]
    assert any(f"['{setting.name}']" in m.msg for m in found), [m.msg for m in found]
    # No exception, and the normalised default (WEBHOOK_SECRETS' default is empty either way).
    assert getattr(nomos_settings, setting.name) == setting.parse(setting.default)


@pytest.mark.parametrize("setting", TABLE, ids=[s.name for s in TABLE])
def test_the_default_passes_its_own_check(settings: Any, setting: Setting) -> None:
    configure(settings, **{setting.name: setting.default})
    said = [m.msg for m in check_settings() if m.id == setting.check_id]
    assert not [m for m in said if f"['{setting.name}'] is" in m and "; it must be " in m]


def test_a_client_is_built_with_a_max_retry_wait_that_is_not_a_number(settings: Any) -> None:
    configure(settings, MAX_RETRY_WAIT="x")
    client = NomosClient()  # raised ValueError before the table: float("x") on every client
    client.close()
    assert nomos_settings.MAX_RETRY_WAIT == 5.0
    assert "nomos_billing.E015" in {m.id for m in check_settings()}


def test_breaker_failures_written_as_a_string_keeps_the_breaker_on(settings: Any) -> None:
    configure(settings, BREAKER_FAILURES="5")
    assert breaker.enabled()  # "5" switched the breaker off without a word before the table
    assert nomos_settings.BREAKER_FAILURES == 5
    assert any("BREAKER_FAILURES" in m.msg for m in check_settings())


def test_zero_breaker_failures_still_switches_the_breaker_off(settings: Any) -> None:
    configure(settings, BREAKER_FAILURES=0)
    assert not breaker.enabled()


def test_values_are_typed_and_normalised(settings: Any) -> None:
    configure(
        settings,
        TIMEOUT=4,
        WEBHOOK_SECRETS="whsec_0123456789abcdef, whsec_fedcba9876543210",
        PORTAL_HOSTS=["Portal.Example.COM"],
        API_RATE_LIMIT=None,
        API_BASE_URL="https://api.nomos.energy/",
    )
    assert nomos_settings.TIMEOUT == (4.0, 4.0)
    assert nomos_settings.WEBHOOK_SECRETS == ["whsec_0123456789abcdef", "whsec_fedcba9876543210"]
    assert nomos_settings.PORTAL_HOSTS == ["portal.example.com"]
    assert nomos_settings.API_RATE_LIMIT == 0.0
    assert nomos_settings.API_BASE_URL == "https://api.nomos.energy"
    assert isinstance(nomos_settings.BREAKER_FAILURES, int)


def test_values_are_read_at_call_time(settings: Any) -> None:
    configure(settings, WEBHOOK_TOLERANCE=60)
    assert nomos_settings.WEBHOOK_TOLERANCE == 60
    configure(settings, WEBHOOK_TOLERANCE=120)
    assert nomos_settings.WEBHOOK_TOLERANCE == 120


def test_a_wrong_value_is_logged_once_per_key_and_value(settings: Any, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="nomos_billing.conf")
    configure(settings, WEBHOOK_MAX_BYTES="once-per-value")
    for _ in range(3):
        assert nomos_settings.WEBHOOK_MAX_BYTES == 256 * 1024
    configure(settings, WEBHOOK_MAX_BYTES="another-value")
    assert nomos_settings.WEBHOOK_MAX_BYTES == 256 * 1024
    lines = [r.getMessage() for r in caplog.records if "WEBHOOK_MAX_BYTES" in r.getMessage()]
    assert len(lines) == 2
    assert not any("once-per-value" in line for line in lines)  # values are never logged


def test_a_wrong_secret_is_never_printed(settings: Any, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="nomos_billing.conf")
    configure(settings, WEBHOOK_SECRETS=[b"whsec_leaked_bytes_value"], CLIENT_SECRET=["s3cr3t"])
    assert nomos_settings.WEBHOOK_SECRETS == []
    assert nomos_settings.CLIENT_SECRET == ""
    said = " ".join(m.msg + (m.hint or "") for m in check_settings())
    said += " ".join(r.getMessage() for r in caplog.records)
    assert "whsec_leaked" not in said and "s3cr3t" not in said


def test_the_table_holds_every_default_of_conf() -> None:
    assert list(conf.DEFAULTS) == [s.name for s in TABLE]
    assert len({s.name for s in TABLE}) == len(TABLE)


def test_is_wrong_tells_a_refused_value_from_a_missing_or_good_one(settings: Any) -> None:
    configure(settings, EVENT_RETENTION_DAYS="30", WEBHOOK_TOLERANCE=60)
    assert conf.is_wrong("EVENT_RETENTION_DAYS")
    assert not conf.is_wrong("WEBHOOK_TOLERANCE")
    assert not conf.is_wrong("CLICK_BUDGET")  # left out: the default is the site's choice


def test_a_key_read_under_held_is_read_once_and_a_container_still_fresh(settings) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "METADATA_USER_KEY": "first"}
    with conf.held():
        assert nomos_settings.METADATA_USER_KEY == "first"
        settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "METADATA_USER_KEY": "second"}
        with conf.held():  # nested: the outer batch's values
            assert nomos_settings.METADATA_USER_KEY == "first"
        assert nomos_settings.METADATA_USER_KEY == "first"
        resolvers = nomos_settings.USER_RESOLVERS
        resolvers.append("changed.by.the.caller")
        assert "changed.by.the.caller" not in nomos_settings.USER_RESOLVERS
    assert nomos_settings.METADATA_USER_KEY == "second"
