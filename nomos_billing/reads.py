"""A page's reads by key: one SELECT each, without Django's per-value steps where they cost.

``by_key`` (objects), ``values_by_key`` (columns) and ``existing`` (which keys have rows) are
``filter(key__in=keys)``, except that on PostgreSQL the keys go in as one parameter, a JSON
array (``= ANY(...)``), of a raw query made once per model: Django compiles an ``IN`` list
value by value, and psycopg parses a statement with more than 50 parameters afresh on every
call (it caches only smaller ones) and adapts a list item by item, in Python. Objects are
built as ``from_db`` builds them (``instances.builder``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection, Sequence
from typing import Any, cast

from django.db import connections, models, router

from .instances import builder


def _any_sql(model: type[models.Model], key: str, names: Sequence[str]) -> tuple[Any, str]:
    """``(connection, "SELECT <names> FROM <table> WHERE <key> = ANY(<the keys>)")``, the keys
    one parameter: a JSON array (``_keys``). psycopg adapts a list as an array in Python,
    item by item; ``json.dumps`` is C, and PostgreSQL still matches the array on the index."""
    connection: Any = connections[router.db_for_read(model)]
    return connection, _made(connection, model, key, names)[0]


#: ``_any_sql``'s statements and ``_converters``' lists, made once each per database.
_MADE: dict[tuple[str, type[models.Model], str, tuple[str, ...]], tuple[str, list[Any]]] = {}


def _made(
    connection: Any, model: type[models.Model], key: str, names: Sequence[str]
) -> tuple[str, list[Any]]:
    signature = (connection.alias, model, key, tuple(names))
    made = _MADE.get(signature)
    if made is None:
        sql = _make_any_sql(connection, model, key, names)
        made = _MADE[signature] = (sql, _converters(connection, model, names))
    return made


def _converters(connection: Any, model: type[models.Model], names: Sequence[str]) -> list[Any]:
    """``(position, converter, column)``: what the compiler would apply to each column
    (JSONField's ``from_db_value``, say)."""
    table = model._meta.db_table
    return [
        (i, converter, col)
        for i, name in enumerate(names)
        for field in [cast("models.Field[Any, Any]", model._meta.get_field(name))]
        for col in [field.get_col(table)]
        for converter in connection.ops.get_db_converters(col) + field.get_db_converters(connection)
    ]


def _make_any_sql(
    connection: Any, model: type[models.Model], key: str, names: Sequence[str]
) -> str:
    quote = connection.ops.quote_name

    def column(name: str) -> str:
        # get_field's type allows a relation; these name our own concrete fields.
        return str(quote(cast("models.Field[Any, Any]", model._meta.get_field(name)).column))

    field = cast("models.Field[Any, Any]", model._meta.get_field(key))
    # varchar, not varchar(64): the column's own type, whatever its length.
    kind = str(field.db_type(connection)).split("(")[0]
    # Names and a type from the model's metadata; the keys go in as the one parameter.
    return (
        f"SELECT {', '.join(map(column, names))} "  # noqa: S608
        f"FROM {quote(model._meta.db_table)} WHERE {column(key)} = "
        f"ANY(ARRAY(SELECT json_array_elements_text(%s::json)::{kind}))"
    )


def _keys(keys: Collection[Any]) -> str:
    return json.dumps(list(keys))


@functools.cache
def _tz_loader() -> Any:
    """psycopg's own loader of timestamptz (C in psycopg[binary]), which Django's wraps; None
    under psycopg2 (Django uses psycopg 3 whenever it is installed)."""
    try:
        from psycopg import adapters, pq
        from psycopg.postgres import types
    except ImportError:
        return None
    return adapters.get_loader(types["timestamptz"].oid, pq.Format.TEXT)


def _rows(
    model: type[models.Model],
    key: str,
    keys: Collection[Any],
    names: Sequence[str],
    *,
    compared: bool = False,
) -> tuple[Any, list[Any]]:
    """``(connection, rows)``: ``values_list(*names)`` of the rows whose ``key`` is one of
    ``keys``, in one SELECT; on PostgreSQL a raw one (``_any_sql``) whose columns get their
    ``_converters``. ``compared``: the values are only compared, so an aware datetime may
    carry psycopg's ``tzinfo`` for the session's zone rather than the connection's (the same
    moment)."""
    connection, sql = _any_sql(model, key, names)
    if connection.vendor != "postgresql":
        found = model._default_manager.filter(**{f"{key}__in": keys}).values_list(*names)
        return connection, list(found)
    with connection.cursor() as cursor:
        if compared and connection.timezone is not None and _tz_loader() is not None:
            # Django's loader calls psycopg's (C) and then replaces each value's tzinfo, in
            # Python: a re-sync reads five datetimes per subscription only to compare them.
            cursor.cursor.adapters.register_loader("timestamptz", _tz_loader())
        cursor.execute(sql, [_keys(keys)])
        rows: list[Any] = cursor.fetchall()
    converters = _made(connection, model, key, names)[1]
    if converters:
        rows = [list(row) for row in rows]
        for row in rows:
            for i, converter, col in converters:
                row[i] = converter(row[i], col, connection)
    return connection, rows


def by_key(model: type[models.Model], key: str, keys: Collection[Any]) -> dict[Any, Any]:
    """The rows of ``model`` whose ``key`` (a unique field) is one of ``keys``, by key, read
    in one SELECT: ``filter(key__in=keys)``, except that on PostgreSQL the keys are one
    parameter (``= ANY(...)`` of a JSON array) of a raw query. Django compiles an ``IN`` list
    value by value and psycopg parses a statement with more than 50 parameters afresh on every
    call (it caches only smaller ones): for a page of 100 keys, most of the SELECT's cost.
    The objects are built as ``from_db`` builds them (``instances.builder``)."""
    if not keys:
        return {}
    fields = model._meta.concrete_fields
    connection, rows = _rows(model, key, keys, [f.name for f in fields])
    build = builder(model)
    position = [f.name for f in fields].index(key)
    result = {}
    for row in rows:
        obj = build(row)
        obj._state.adding = False
        obj._state.db = connection.alias
        result[row[position]] = obj
    return result


def values_by_key(
    model: type[models.Model],
    key: str,
    keys: Collection[Any],
    names: Sequence[str],
    *,
    compared: bool = False,
) -> dict[Any, tuple[Any, ...]]:
    """``values_list(key, *names)`` of the rows whose ``key`` is one of ``keys``, by key: a
    row's columns without building its object (one SELECT, as ``by_key``'s). ``compared``:
    as ``_rows``'."""
    if not keys:
        return {}
    _, rows = _rows(model, key, keys, (key, *names), compared=compared)
    return {row[0]: tuple(row[1:]) for row in rows}


def existing(model: type[models.Model], key: str, keys: Collection[Any]) -> set[Any]:
    """Which of ``keys`` (values of the unique field ``key``) ``model`` has rows for (one
    SELECT of that column alone, as ``values_by_key``)."""
    return set(values_by_key(model, key, keys, ()))
