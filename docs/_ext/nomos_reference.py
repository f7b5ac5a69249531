"""Generates the settings and checks reference from the code, so the docs cannot drift.

Before Sphinx reads the sources it writes ``reference/_generated/settings.md`` (every key of
``nomos_billing.settings_table.TABLE``: its type, default and check id as the code declares
them, and the notes of ``settings_notes.py``) and ``reference/_generated/checks.md`` (every
``nomos_billing.E0xx`` / ``W0xx`` id: those of the table, with what each key must be, and those
defined in the ``nomos_billing/checks*.py`` modules, with the message and hint their code gives;
the ids of ``checks_deploy.py`` are marked as ``check --deploy`` ones).
A key without notes, notes for a key that is gone, or an id whose message cannot be found is a
warning, and the build runs with warnings as errors.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
CHECKS_SOURCES = sorted((ROOT / "nomos_billing").glob("checks*.py"))
ID_PATTERN = re.compile(r"^nomos_billing\.[EW]\d{3}$")

# Checks whose message is built by a shared helper from a template: what the template says
# for each of them, in words.
INDIRECT_MESSAGES = {
    "E007": "`TOKEN_CACHE` is not an alias of `CACHES`.",
    "E081": "`RATE_LIMIT_CACHE` is not an alias of `CACHES`.",
    "W001": "`TOKEN_CACHE` is a per-process (local memory or dummy) cache outside DEBUG.",
    "W080": "`RATE_LIMIT_CACHE` is a per-process (local memory or dummy) cache outside DEBUG.",
}


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _render(node: ast.expr) -> str | None:
    """A message or hint as the code writes it, placeholders for what it fills in."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                inner = value.value
                if (
                    isinstance(inner, ast.Call)
                    and isinstance(inner.func, ast.Name)
                    and inner.func.id == "key"
                    and inner.args
                    and isinstance(inner.args[0], ast.Constant)
                ):
                    parts.append(f"NOMOS_BILLING['{inner.args[0].value}']")
                else:
                    parts.append("…")
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _render(node.left), _render(node.right)
        return None if left is None or right is None else left + right
    return None


def check_ids(source: str) -> dict[str, dict[str, Any]]:
    """Every check id that ``checks.py`` defines, with the messages and hints its code gives."""
    tree = ast.parse(source)
    names: dict[str, str] = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            and ID_PATTERN.match(node.value.value)
        ):
            names[node.targets[0].id] = node.value.value
    found: dict[str, dict[str, Any]] = {
        check_id: {"name": name, "messages": [], "hints": []} for name, check_id in names.items()
    }
    hint_names: dict[str, ast.expr] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id == "hint":
                hint_names.setdefault(target.id, node.value)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        if node.func.id not in ("Error", "Warning"):
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        id_node = keywords.get("id")
        if not (isinstance(id_node, ast.Name) and id_node.id in names):
            continue
        entry = found[names[id_node.id]]
        message = _render(node.args[0]) if node.args else None
        if message and message not in entry["messages"]:
            entry["messages"].append(message)
        hint = keywords.get("hint")
        rendered = _render(hint) if hint is not None else None
        if rendered and rendered not in entry["hints"]:
            entry["hints"].append(rendered)
    return dict(sorted(found.items()))


def table_ids() -> dict[str, dict[str, Any]]:
    """The check id of each key of the table, with what a value of the key must be."""
    from nomos_billing.checks import expectation
    from nomos_billing.settings_table import TABLE

    found: dict[str, dict[str, Any]] = {}
    for setting in TABLE:
        entry = found.setdefault(setting.check_id, {"name": "", "messages": [], "hints": []})
        entry["messages"].append(f"`{setting.name}` is not {expectation(setting)}.")
        if setting.hint and setting.hint not in entry["hints"]:
            entry["hints"].append(setting.hint)
    return found


def settings_page() -> str:
    from settings_notes import NOTES

    from nomos_billing.settings_table import TABLE

    rows = [
        "| key | type | default | check | notes |",
        "|---|---|---|---|---|",
    ]
    for setting in TABLE:
        key = setting.name
        if key not in NOTES:
            logger.warning("setting %s has no notes in docs/_ext/settings_notes.py", key)
        notes = NOTES.get(key, "")
        check = setting.check_id.split(".", 1)[1]
        typ, default = _cell(setting.type), f"`{setting.default!r}`"
        rows.append(f"| `{key}` | {typ} | {default} | {check} | {_cell(notes)} |")
    for key in NOTES.keys() - {s.name for s in TABLE}:
        logger.warning("docs/_ext/settings_notes.py has notes for %s, not a setting", key)
    return "\n".join(rows) + "\n"


def checks_page() -> str:
    rows = [
        "| id | level | what the check says | hint |",
        "|---|---|---|---|",
    ]
    found = table_ids()
    for source in CHECKS_SOURCES:
        for check_id, entry in check_ids(source.read_text()).items():
            known = found.setdefault(check_id, {"name": "", "messages": [], "hints": []})
            known["messages"] += entry["messages"]
            known["hints"] += [h for h in entry["hints"] if h not in known["hints"]]
            if source.name == "checks_deploy.py":
                known["name"] = "DEPLOY"
    for check_id, entry in sorted(found.items()):
        short = check_id.split(".", 1)[1]
        messages = entry["messages"] + (
            [INDIRECT_MESSAGES[short]] if short in INDIRECT_MESSAGES else []
        )
        if not messages:
            logger.warning(
                "check %s: no message found in the checks nor in INDIRECT_MESSAGES", check_id
            )
        level = "Error" if short.startswith("E") else "Warning"
        if "DEPLOY" in entry["name"]:
            level += " (`check --deploy`)"
        said = "<br>".join(_cell(m) for m in messages)
        hints = "<br>".join(_cell(h) for h in entry["hints"])
        rows.append(f"| `{check_id}` | {level} | {said} | {hints} |")
    return "\n".join(rows) + "\n"


def generate(app: Sphinx) -> None:
    out = Path(app.srcdir) / "reference" / "_generated"
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("settings.md", settings_page()), ("checks.md", checks_page())):
        path = out / name
        # Rewritten only when changed, so that Sphinx's incremental build stays incremental.
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("builder-inited", generate)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
