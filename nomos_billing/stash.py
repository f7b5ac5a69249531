"""Customers a sync walked past, kept on disk until their subscriptions come by.

List items name their customer by id only, and Nomos has no filter by id on
``GET /customers``: a first sync walks every customer once (100 per call) and keeps the ones new
to us until their subscriptions' page arrives, in any order. Kept in a dict that was about
0.6 KB per customer for the whole walk (RSS 129 MiB at 100,000 subscriptions against 75 MiB at
10,000). Here they go into a private temporary SQLite file instead (the standard library's
``sqlite3``, whatever database the site uses): memory is a bounded page cache, and each page of
subscriptions reads, then forgets, the customers it needs with one query. The file is deleted
when the stash is closed (SQLite deletes a temporary database when its connection closes).

Given the ``keys`` it keeps of each customer, a stash stores them as columns: a customer whose
values are all strings or null (as Nomos sends them) costs no JSON on the way in or out, about
a tenth of a first sync's CPU per subscription before. Any other customer is kept as JSON.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

#: SQLite's page cache for the stash, in KiB (a negative ``cache_size``): what it may keep
#: in memory whatever the number of customers.
CACHE_KIB = 2048
_AS_THEY_ARE = frozenset({str, type(None)})


class CustomerStash:
    """``put`` Nomos customer objects (by ``id``), ``take`` them back once, by id. With
    ``keys``, a customer is kept and given back as those keys only (a missing one as None)."""

    def __init__(self, keys: Sequence[str] = ()) -> None:
        self._keys = [k for k in keys if k != "id"]
        # "": a private temporary database on disk, deleted on close.
        self._db = sqlite3.connect("", isolation_level=None)
        self._db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        # Columns c0, c1, ... for the keys (names of ours: a key is never put into SQL).
        columns = "".join(f", c{n}" for n in range(len(self._keys)))
        self._db.execute(f"CREATE TABLE customer (id TEXT PRIMARY KEY, data TEXT{columns})")
        marks = ", ?" * len(self._keys)
        self._insert = f"INSERT OR REPLACE INTO customer VALUES (?, ?{marks})"  # noqa: S608
        self._select = f"SELECT id, data{columns} FROM customer WHERE id IN "  # noqa: S608
        #: How many were put and not taken yet (more if one was put twice): none, no SELECT.
        self._kept = 0

    def put(self, customers: Iterable[dict[str, Any]]) -> None:
        keys, empty = self._keys, [None] * len(self._keys)
        rows = []
        for customer in customers:
            values = list(map(customer.get, keys))
            # Only these come back from a column as they went in (a bool would come back 1).
            if keys and set(map(type, values)) <= _AS_THEY_ARE:
                rows.append((customer["id"], None, *values))
            else:
                kept = customer
                if keys:
                    kept = {"id": customer["id"], **dict(zip(keys, values, strict=True))}
                rows.append((customer["id"], json.dumps(kept), *empty))
        # One transaction per call; a customer listed twice (Nomos' cursors promise it never
        # is) keeps the later copy.
        self._db.execute("BEGIN")
        self._db.executemany(self._insert, rows)
        self._db.execute("COMMIT")
        self._kept += len(rows)

    def take(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stashed customers among ``ids``, removed from the stash."""
        wanted = list(ids)
        found: dict[str, dict[str, Any]] = {}
        if self._kept <= 0:
            return found
        # Within SQLite's oldest limit on bound parameters (999).
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, data, *values in self._db.execute(f"{self._select}({marks})", chunk):
                if data is None:
                    customer = dict(zip(self._keys, values, strict=True))
                    customer["id"] = key
                    found[key] = customer
                else:
                    found[key] = json.loads(data)
        if found:
            keys = list(found)
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                self._db.execute(f"DELETE FROM customer WHERE id IN ({marks})", chunk)  # noqa: S608
            self._kept -= len(found)
        return found

    def close(self) -> None:
        """Drop the stash (``contextlib.closing`` makes it a context manager)."""
        self._db.close()
