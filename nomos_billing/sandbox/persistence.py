"""``--state FILE``: the sandbox's data kept across runs, so a demo rerun agrees with its database.

Only the account's data is kept (customers, subscriptions, leads, events and which lead each
subscription came from); tokens, magic links, counters and faults belong to one run. The file
is JSON, written whole to a temporary file and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .stores import SandboxStores

VERSION = 1
_KEPT = ("customers", "subscriptions", "leads", "events")
_PRIVATE = ("_lead_requests", "_subscription_leads")


def dump(sb: SandboxStores) -> dict[str, Any]:
    with sb.lock:
        data: dict[str, Any] = {"version": VERSION}
        for name in (*_KEPT, *_PRIVATE):
            data[name.lstrip("_")] = getattr(sb, name)
        return json.loads(json.dumps(data))  # a deep copy that is surely JSON


def save(sb: SandboxStores, path: str | os.PathLike[str]) -> None:
    target = Path(path)
    text = json.dumps(dump(sb), ensure_ascii=False, indent=1, sort_keys=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(sb: SandboxStores, path: str | os.PathLike[str]) -> bool:
    """Replace ``sb``'s data with the file's; False (data untouched) when there is no file.

    ``ValueError`` for a file that is not a sandbox state, so a typo in ``--state`` does not
    silently start an empty account over someone's file.
    """
    target = Path(path)
    if not target.exists():
        return False
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{target} is not a sandbox state file: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError(f"{target} is not a sandbox state file (version {VERSION})")
    with sb.lock:
        for name in (*_KEPT, *_PRIVATE):
            value = data.get(name.lstrip("_"), {})
            if not isinstance(value, dict):
                raise ValueError(f"{target}: {name.lstrip('_')} is not an object")
            current = getattr(sb, name)
            current.clear()
            current.update(value)
    return True
