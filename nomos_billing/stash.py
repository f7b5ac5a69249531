"""Customers a sync walked past, kept on disk until their subscriptions come by.

List items name their customer by id only, and Nomos has no filter by id on
``GET /customers``: a first sync walks every customer once (100 per call) and keeps the ones new
to us until their subscriptions' page arrives, in any order. Kept in a dict that was about
0.6 KB per customer for the whole walk (RSS 129 MiB at 100,000 subscriptions against 75 MiB at
10,000). Here they go into a private temporary SQLite file instead (the standard library's
``sqlite3``, whatever database the site uses): memory is a bounded page cache, and each page of
subscriptions reads, then forgets, the customers it needs with one query. The file is deleted
when the stash is closed (SQLite deletes a temporary database when its connection closes).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

#: SQLite's page cache for the stash, in KiB (a negative ``cache_size``): what it may keep
#: in memory whatever the number of customers.
CACHE_KIB = 2048


class CustomerStash:
    """``put`` Nomos customer objects (by ``id``), ``take`` them back once, by id."""

    def __init__(self) -> None:
        # "": a private temporary database on disk, deleted on close.
        self._db = sqlite3.connect("", isolation_level=None)
        self._db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.execute("CREATE TABLE customer (id TEXT PRIMARY KEY, data TEXT NOT NULL)")

    def put(self, customers: Iterable[dict[str, Any]]) -> None:
        rows = [(c["id"], json.dumps(c)) for c in customers]
        # One transaction per call; a customer listed twice (Nomos' cursors promise it never
        # is) keeps the later copy.
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO customer VALUES (?, ?)", rows)
        self._db.execute("COMMIT")

    def take(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stashed customers among ``ids``, removed from the stash."""
        wanted = list(ids)
        found: dict[str, dict[str, Any]] = {}
        # Within SQLite's oldest limit on bound parameters (999).
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, data in self._db.execute(
                f"SELECT id, data FROM customer WHERE id IN ({marks})",  # noqa: S608 - marks only
                chunk,
            ):
                found[key] = json.loads(data)
        if found:
            keys = list(found)
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                self._db.execute(f"DELETE FROM customer WHERE id IN ({marks})", chunk)  # noqa: S608
        return found

    def close(self) -> None:
        """Drop the stash (``contextlib.closing`` makes it a context manager)."""
        self._db.close()
