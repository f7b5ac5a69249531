"""One INSERT for a page of new rows, without Django's per-value compile steps.

A first sync of 100,000 subscriptions spent half its CPU in ``bulk_create`` (issue 22): for
every value of every row the compiler calls the field's ``pre_save``, ``get_db_prep_save`` and
``get_prep_value`` and checks for expressions, and on PostgreSQL psycopg then writes each
column out as an array literal, in Python, value by value. The rows a sync inserts hold plain
values we built ourselves (``str``, ``int``, aware ``datetime``, a ``dict`` for JSON), so:

- on PostgreSQL the page goes in as one JSON document (``json.dumps``, which is C) that the
  server unpacks with ``json_to_recordset``; a value that is not plain JSON, or a naive
  datetime, sends the page to ``bulk_create`` instead;
- on SQLite as one multi-row ``VALUES``, datetimes through the backend's
  ``adapt_datetimefield_value`` (what ``DateTimeField`` ends with), anything unexpected
  through the field's own ``get_db_prep_save``;
- on other databases with ``bulk_create``.

Like ``bulk_create``: all rows or none, primary keys set on the objects (matched back by a
unique field, so the order rows come back in does not matter), no signals,
``auto_now``/``auto_now_add`` filled in. (A page's reads by key are ``reads``.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any, NamedTuple, cast

from django.db import connections, models, router, transaction
from django.utils import timezone

from .instances import layout, new

Adapter = Callable[[Any], Any]
#: Types a field of this class stores as they are (its ``get_db_prep_save`` returns them).
_PLAIN: tuple[tuple[type[models.Field[Any, Any]], tuple[type, ...]], ...] = (
    (models.CharField, (str,)),
    (models.TextField, (str,)),
    (models.BooleanField, (bool,)),
    (models.IntegerField, (int,)),
    (models.ForeignKey, (int,)),
)


def _adapter(field: models.Field[Any, Any], connection: Any) -> Adapter:
    def slow(value: Any) -> Any:
        return field.get_db_prep_save(value, connection)

    if isinstance(field, models.DateTimeField):
        adapt_datetime = connection.ops.adapt_datetimefield_value

        def moment(value: Any) -> Any:
            # A naive datetime takes the field's way (made aware, with its warning).
            if value is None or (type(value) is datetime and value.tzinfo is not None):
                return adapt_datetime(value)
            return slow(value)

        return moment
    for kind, types in _PLAIN:
        if isinstance(field, kind):

            def plain(value: Any, types: tuple[type, ...] = types) -> Any:
                if value is None or type(value) in types:
                    return value
                return slow(value)

            return plain
    return slow


class _Page(NamedTuple):
    """One statement's worth: where, which columns, which rows (values by attname: an
    object's ``__dict__`` or a row of ``insert_rows``), and the unique field that matches each
    row back to its new primary key."""

    connection: Any
    model: type[models.Model]
    fields: list[models.Field[Any, Any]]
    rows: Sequence[dict[str, Any]]
    key: models.Field[Any, Any]
    #: What the auto_now and auto_now_add fields of every row were set to.
    now: datetime
    #: The rows are dicts of attnames only (``insert_rows``), not objects' ``__dict__``.
    plain: bool = False


def _inserter(connection: Any) -> Callable[[_Page], list[tuple[Any, Any]] | None] | None:
    if connection.vendor == "postgresql":
        return _insert_postgresql
    if connection.vendor == "sqlite" and connection.features.can_return_rows_from_bulk_insert:
        return _insert_values
    return None


def _columns(model: type[models.Model]) -> tuple[list[Any], list[Any]]:
    """The fields an INSERT writes, and those of them it stamps (auto_now, auto_now_add)."""
    fields = [f for f in model._meta.local_concrete_fields if not f.primary_key]
    stamped = [
        f for f in fields if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
    ]
    return fields, stamped


def insert(model: type[models.Model], objs: Sequence[models.Model], *, key: str) -> None:
    """INSERT ``objs`` (new, unsaved ``model`` instances) in one statement and set their
    primary keys, matched back by ``key`` (a unique field); raises ``IntegrityError`` as
    ``bulk_create`` would."""
    if not objs:
        return
    alias = router.db_for_write(model)
    connection = connections[alias]
    inserted = _inserter(connection)
    if inserted is None:
        model._default_manager.using(alias).bulk_create(objs)
        return
    fields, stamped = _columns(model)
    now = timezone.now()
    for field in stamped:
        # What pre_save does for a new row, one moment for the whole statement.
        if isinstance(field, models.DateTimeField):
            for obj in objs:
                setattr(obj, field.attname, now)
        else:
            for obj in objs:
                field.pre_save(obj, True)
    # get_field's type allows a relation; ``key`` names one of our unique columns.
    unique = cast("models.Field[Any, Any]", model._meta.get_field(key))
    # An instance's values are its __dict__, by attname (every concrete field is set there).
    rows = [obj.__dict__ for obj in objs]
    pairs = inserted(_Page(connection, model, fields, rows, unique, now))
    if pairs is None:
        model._default_manager.using(alias).bulk_create(objs)
        return
    keys = dict(pairs)
    for obj in objs:
        obj.pk = keys[getattr(obj, key)]
        obj._state.adding = False
        obj._state.db = alias


def insert_rows(
    model: type[models.Model], rows: Sequence[dict[str, Any]], *, key: str
) -> dict[Any, Any]:
    """``insert`` for rows given as values by attname (as ``new`` takes them) instead of
    objects: no object is built for a row where the database takes the page as it is. Fills
    each row's auto_now and auto_now_add fields (as ``insert`` sets them on an object) and the
    defaults of fields it lacks; returns the new primary keys by ``key``."""
    if not rows:
        return {}
    connection = connections[router.db_for_write(model)]
    inserted = _inserter(connection)
    fields, stamped = _columns(model)
    if inserted is None or not all(isinstance(f, models.DateTimeField) for f in stamped):
        objs = [new(model, row) for row in rows]
        insert(model, objs, key=key)
        for row, obj in zip(rows, objs, strict=True):
            row.update((f.attname, getattr(obj, f.attname)) for f in stamped)
        return {getattr(obj, key): obj.pk for obj in objs}
    attnames, defaults = layout(model)
    needed = {f.attname for f in fields} - {f.attname for f in stamped}
    now = timezone.now()
    for row in rows:
        if not row.keys() <= attnames:
            raise TypeError(f"{model.__name__} has no fields {sorted(row.keys() - attnames)}")
        if not needed <= row.keys():
            for attname, make, default in defaults:
                if attname in needed and attname not in row:
                    row[attname] = make() if make else default
        for field in stamped:
            row[field.attname] = now
    unique = cast("models.Field[Any, Any]", model._meta.get_field(key))
    pairs = inserted(_Page(connection, model, fields, rows, unique, now, plain=True))
    if pairs is None:
        objs = [new(model, row) for row in rows]
        model._default_manager.using(connection.alias).bulk_create(objs)
        return {getattr(obj, key): obj.pk for obj in objs}
    return dict(pairs)


def _insert_postgresql(page: _Page) -> list[tuple[Any, Any]] | None:
    """None when a value is not plain JSON (or a naive datetime): left to bulk_create."""
    connection, model, fields, given, key, *_ = page
    # The page as one JSON document that PostgreSQL unpacks (json_to_recordset): json.dumps
    # is C, where adapting each value, or each column as an array (Django's UNNEST insert),
    # is Python per value.
    attnames = [(field.attname, str(field.column)) for field in fields]
    moments = [str(f.column) for f in fields if isinstance(f, models.DateTimeField)]
    # Rows of insert_rows hold only attnames; where each is its column, a copy is the row
    # (an object's __dict__ holds more: its state).
    copy = page.plain and all(attname == column for attname, column in attnames)
    # A moment goes in as microseconds since the epoch, which the statement adds to it: an
    # integer is a tenth of ``isoformat``'s cost (a first sync writes five moments per
    # subscription). The statement's one auto_now moment (two columns of every row) once.
    stamp = (page.now - _EPOCH) // _MICROSECOND
    rows = []
    for values in given:
        row = values.copy() if copy else {column: values[attname] for attname, column in attnames}
        for column in moments:
            value = row[column]
            if value is not None:
                if value.tzinfo is None:
                    return None  # naive: the field's way (made aware, with its warning)
                if value is page.now:
                    row[column] = stamp
                    continue
                micros = (value - _EPOCH) // _MICROSECOND
                if not -_EXACT < micros < _EXACT:
                    return None  # beyond what PostgreSQL multiplies exactly: the field's way
                row[column] = micros
        rows.append(row)
    try:
        document = _ENCODER.encode(rows)
    except (TypeError, ValueError, RecursionError):
        # A value that is not plain JSON (or a cycle, too deep without the check): the
        # field's way, which raises what bulk_create raises for it.
        return None
    with connection.cursor() as cursor:
        cursor.execute(_recordset_sql(connection, model, fields, key), [document])
        return cursor.fetchall()


_EPOCH = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
#: Microseconds PostgreSQL's ``interval * float8`` takes exactly: 1685 to 2255.
_EXACT = 2**53


def db_type(field: models.Field[Any, Any], connection: Any) -> str:
    # varchar, not varchar(64): the column's own type, whatever its length.
    return str(field.db_type(connection)).split("(")[0]


#: ``json.dumps(allow_nan=False)`` without its check for cycles, which notes every dict of a
#: page (a tenth of the encoding): rows we built of values decoded from JSON hold none.
_ENCODER = json.JSONEncoder(allow_nan=False, check_circular=False)

#: The INSERT of ``_insert_postgresql`` per database, model and key: ``db_type`` of every
#: field on every page cost more than the rest of the statement's making.
_RECORDSET_SQL: dict[tuple[str, type[models.Model], str], str] = {}


def _recordset_sql(
    connection: Any,
    model: type[models.Model],
    fields: list[models.Field[Any, Any]],
    key: models.Field[Any, Any],
) -> str:
    cached = _RECORDSET_SQL.get((connection.alias, model, key.name))
    if cached is not None:
        return cached
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)
    # A moment arrives as microseconds since the epoch (``_insert_postgresql``): exact while
    # within 2**53, as interval * float8 multiplies.
    values = ", ".join(
        f"'epoch'::timestamptz + page.{quote(f.column)} * interval '1 microsecond'"
        if isinstance(f, models.DateTimeField)
        else f"page.{quote(f.column)}"
        for f in fields
    )
    types = ", ".join(
        f"{quote(f.column)} "
        + ("bigint" if isinstance(f, models.DateTimeField) else db_type(f, connection))
        for f in fields
    )
    # Names from the model's metadata, quoted; the values go in as the one parameter.
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} ({columns}) "  # noqa: S608
        f"SELECT {values} FROM json_to_recordset(%s::json) AS page({types}) "
        f"RETURNING {quote(key.column)}, {quote(model._meta.pk.column)}"
    )
    _RECORDSET_SQL[connection.alias, model, key.name] = sql
    return sql


def _insert_values(page: _Page) -> list[tuple[Any, Any]]:
    connection, model, fields, given, key, *_ = page
    quote = connection.ops.quote_name
    adapters = [_adapter(field, connection) for field in fields]
    head = (
        f"INSERT INTO {quote(model._meta.db_table)} "  # noqa: S608 - quoted names only
        f"({', '.join(quote(f.column) for f in fields)}) VALUES "
    )
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    tail = f" RETURNING {quote(key.column)}, {quote(model._meta.pk.column)}"
    # Within the backend's limit on bound parameters (999 on an old SQLite).
    size = max(1, connection.ops.bulk_batch_size(fields, given))
    keys: list[tuple[Any, Any]] = []
    # Several statements are all or nothing, as bulk_create's batches are.
    several = len(given) > size
    with transaction.atomic(using=connection.alias, savepoint=False) if several else nullcontext():
        for start in range(0, len(given), size):
            batch = given[start : start + size]
            params = [
                adapt(values[field.attname])
                for values in batch
                for field, adapt in zip(fields, adapters, strict=True)
            ]
            with connection.cursor() as cursor:
                cursor.execute(head + ", ".join([row] * len(batch)) + tail, params)
                keys += cursor.fetchall()
    return keys
