"""System checks for ``NOMOS_BILLING``: every missing or wrong setting is explained by
``manage.py check`` with a stable id and a hint that says what to write.

One loop over ``settings_table.TABLE`` reads each key as the run time does and names a wrong
one with the key's id; ``checks_rules.py`` adds what spans keys or looks beyond the setting
(budgets against each other, caches and task backends that must exist); ``checks_deploy.py``
holds what only ``check --deploy`` asks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from . import checks_deploy  # noqa: F401  (registers the check --deploy checks)
from .checks_rules import RULES
from .checks_secrets import check_webhook_secrets
from .conf import DEFAULTS, SETTING_NAME, key
from .settings_table import TABLE, Setting

# Ids are stable: sites silence them with SILENCED_SYSTEM_CHECKS, so never reuse one. The
# table (settings_table.py) names the id of each key; these are the ones this module writes.
E_NOT_A_DICT = "nomos_billing.E003"
W_UNKNOWN_KEY = "nomos_billing.W003"


def expectation(setting: Setting) -> str:
    """What a value of ``setting`` must be, in the words its parser refuses one with."""
    try:
        (setting.strict or setting.parse)(object())
    except ValueError as exc:
        return str(exc)
    return setting.type


def read(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, CheckMessage]]:
    """Every key as the run time reads it (the default where it is missing or wrong), and the
    message for each wrong key, with that key's id."""
    values: dict[str, Any] = {}
    wrong: dict[str, CheckMessage] = {}
    for setting in TABLE:
        value = raw.get(setting.name, setting.default)
        try:
            if setting.strict is not None:
                setting.strict(value)
            values[setting.name] = setting.parse(value)
        except ValueError as exc:
            values[setting.name] = setting.parse(setting.default)
            shown = f"a {type(value).__name__}" if setting.secret else repr(value)
            level = Warning if ".W" in setting.check_id else Error
            wrong[setting.name] = level(
                f"{key(setting.name)} is {shown}; it must be {exc}.",
                hint=setting.hint or f"Remove the key for the default, {setting.default!r}.",
                id=setting.check_id,
            )
    return values, wrong


@register(Tags.security, "nomos_billing")
def check_settings(app_configs: Iterable[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    raw = getattr(settings, SETTING_NAME, None)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return [
            Error(
                f"{SETTING_NAME} must be a dict, not {type(raw).__name__}.",
                hint=f'Write {SETTING_NAME} = {{"CLIENT_ID": ..., "CLIENT_SECRET": ..., '
                '"WEBHOOK_SECRETS": [...]}} in your settings.',
                id=E_NOT_A_DICT,
            )
        ]
    messages: list[CheckMessage] = [
        Warning(
            f"{key(name)} is not a setting nomos_billing knows; it is ignored.",
            hint="Check the spelling. Known keys: " + ", ".join(sorted(DEFAULTS)) + ".",
            id=W_UNKNOWN_KEY,
        )
        for name in sorted(set(raw) - set(DEFAULTS))
    ]
    values, wrong = read(raw)
    messages.extend(wrong.values())
    for rule in (check_webhook_secrets, *RULES):
        messages.extend(rule(raw, values, set(wrong)))
    return messages
