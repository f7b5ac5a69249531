"""Counts that cost the same at a thousand rows and at a million, and say what they are.

An exact ``COUNT(*)`` reads every row it counts, so a page that shows one (the admin's "1,000,000
webhook events", the health page's failed events) gets slower as the table grows: 1.5-7x at a
million events. The admin and the health page count one of two honest ways instead:

- **bounded**: counted through the filter's index up to ``BOUND`` rows, shown as "more than
  10,000" beyond that (``bounded``);
- **estimated**: a whole table's size from PostgreSQL's planner statistics
  (``pg_class.reltuples``, kept by autovacuum and ``ANALYZE``), shown as "about 1,000,000";
  elsewhere, or for a table that small, a bounded count.

``CountingPaginator`` gives the admin's lists these counts, and says which kind it gave.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet

__all__ = ["BOUND", "CountingPaginator", "bounded"]

#: Rows counted at most; a hundred admin pages of a hundred rows.
BOUND = 10_000

Kind = Literal["exact", "more", "estimate"]


def bounded(queryset: QuerySet[Any]) -> tuple[int, bool]:
    """``(count, more)``: the exact count up to ``BOUND``, else ``(BOUND, True)``."""
    found = queryset.order_by()[: BOUND + 1].count()
    return min(found, BOUND), found > BOUND


def _whole_table(queryset: QuerySet[Any]) -> tuple[int, Kind]:
    """A whole table on PostgreSQL in one statement at any size: the estimate when it is over
    ``BOUND``, else the bounded count (the planner runs that subquery only then)."""
    connection = connections[queryset.db]
    inner, params = queryset.order_by().values("pk")[: BOUND + 1].query.sql_with_params()
    # Only our own quoted table name and Django's compiled query are formatted in.
    sql = (
        "SELECT CASE WHEN c.reltuples > %s THEN c.reltuples::bigint "  # noqa: S608
        f"ELSE (SELECT count(*) FROM ({inner}) AS bounded) END, c.reltuples > %s "
        "FROM pg_class c WHERE c.oid = to_regclass(%s)"
    )
    table = connection.ops.quote_name(queryset.model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(sql, [BOUND, *params, BOUND, table])
        number, estimate = cursor.fetchone()
    if estimate:
        return int(number), "estimate"
    return min(int(number), BOUND), "more" if number > BOUND else "exact"


class CountingPaginator(Paginator):
    """The admin's paginator, counting as the module says; ``kind`` says how it counted."""

    kind: Kind = "exact"

    @cached_property
    def count(self) -> int:
        found = self.object_list
        if not isinstance(found, QuerySet):
            return super().count
        if not found.query.where and connections[found.db].vendor == "postgresql":
            number, self.kind = _whole_table(found)
            return number
        number, more = bounded(found)
        self.kind = "more" if more else "exact"
        return number
