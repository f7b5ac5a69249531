"""Counts that cost the same at a thousand rows and at a million, and say what they are.

An exact ``COUNT(*)`` reads every row it counts, so a page that shows one (the admin's "1,000,000
webhook events", the health page's failed events) gets slower as the table grows: 1.5-7x at a
million events. The admin and the health page count one of two honest ways instead:

- **bounded**: counted through the filter's index up to ``BOUND`` rows, shown as "more than
  10,000" beyond that (``bounded``);
- **estimated**: a whole table's size from PostgreSQL's planner statistics
  (``pg_class.reltuples``, kept by autovacuum and ``ANALYZE``), shown as "about 1,000,000"
  (``estimated``); elsewhere, or for a table that small, a bounded count.

``CountingPaginator`` gives the admin's lists these counts, and says which kind it gave.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Model, QuerySet

__all__ = ["BOUND", "CountingPaginator", "bounded", "estimated"]

#: Rows counted at most; a hundred admin pages of a hundred rows.
BOUND = 10_000

Kind = Literal["exact", "more", "estimate"]


def bounded(queryset: QuerySet[Any]) -> tuple[int, bool]:
    """``(count, more)``: the exact count up to ``BOUND``, else ``(BOUND, True)``."""
    found = queryset.order_by()[: BOUND + 1].count()
    return min(found, BOUND), found > BOUND


def estimated(model: type[Model], using: str = "default") -> int | None:
    """The planner's row estimate of ``model``'s table on PostgreSQL; None elsewhere, or when
    the table was never analysed."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)",
            [connection.ops.quote_name(model._meta.db_table)],
        )
        row = cursor.fetchone()
    if row is None or row[0] is None or row[0] < 0:
        return None
    return int(row[0])


class CountingPaginator(Paginator):
    """The admin's paginator, counting as the module says; ``kind`` says how it counted."""

    kind: Kind = "exact"

    @cached_property
    def count(self) -> int:
        found = self.object_list
        if not isinstance(found, QuerySet):
            return super().count
        if not found.query.where:
            # The whole table: an estimate when it is large, said to be one.
            estimate = estimated(found.model, found.db)
            if estimate is not None and estimate > BOUND:
                self.kind = "estimate"
                return estimate
        number, more = bounded(found)
        self.kind = "more" if more else "exact"
        return number
