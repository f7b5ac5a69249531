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
``auto_now``/``auto_now_add`` filled in.

The page's reads by key (``by_key``, ``values_by_key``, ``existing``) are one SELECT each, on
PostgreSQL with the keys as one array parameter (``= ANY(%s)``) instead of an ``IN`` list.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from contextlib import nullcontext
from datetime import datetime
from typing import Any, NamedTuple, cast

from django.db import connections, models, router, transaction
from django.db.models import signals
from django.db.models.base import ModelState
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.query_utils import DeferredAttribute
from django.utils import timezone

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
    """One statement's worth: where, which columns, which rows, and the unique field that
    matches each row back to its new primary key."""

    connection: Any
    model: type[models.Model]
    fields: list[models.Field[Any, Any]]
    objs: Sequence[models.Model]
    key: models.Field[Any, Any]
    #: What the auto_now and auto_now_add fields of every row were set to.
    now: datetime


def insert(model: type[models.Model], objs: Sequence[models.Model], *, key: str) -> None:
    """INSERT ``objs`` (new, unsaved ``model`` instances) in one statement and set their
    primary keys, matched back by ``key`` (a unique field); raises ``IntegrityError`` as
    ``bulk_create`` would."""
    if not objs:
        return
    alias = router.db_for_write(model)
    connection = connections[alias]
    inserted: Callable[[_Page], list[tuple[Any, Any]] | None]
    if connection.vendor == "postgresql":
        inserted = _insert_postgresql
    elif connection.vendor == "sqlite" and connection.features.can_return_rows_from_bulk_insert:
        inserted = _insert_values
    else:
        model._default_manager.using(alias).bulk_create(objs)
        return
    meta = model._meta
    fields = [f for f in meta.local_concrete_fields if not f.primary_key]
    stamped = [
        f for f in fields if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
    ]
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
    unique = cast("models.Field[Any, Any]", meta.get_field(key))
    pairs = inserted(_Page(connection, model, fields, objs, unique, now))
    if pairs is None:
        model._default_manager.using(alias).bulk_create(objs)
        return
    keys = dict(pairs)
    for obj in objs:
        obj.pk = keys[getattr(obj, key)]
        obj._state.adding = False
        obj._state.db = alias


def _insert_postgresql(page: _Page) -> list[tuple[Any, Any]] | None:
    """None when a value is not plain JSON (or a naive datetime): left to bulk_create."""
    connection, model, fields, objs, key, _ = page
    # The page as one JSON document that PostgreSQL unpacks (json_to_recordset): json.dumps
    # is C, where adapting each value, or each column as an array (Django's UNNEST insert),
    # is Python per value.
    quote = connection.ops.quote_name
    attnames = [(field.attname, field.column) for field in fields]
    moments = [f.column for f in fields if isinstance(f, models.DateTimeField)]
    # The statement's one auto_now moment (two columns of every row) is written out once.
    stamp = page.now.isoformat()
    rows = []
    for obj in objs:
        values = obj.__dict__
        row = {column: values[attname] for attname, column in attnames}
        for column in moments:
            value = row[column]
            if value is not None:
                if value.tzinfo is None:
                    return None  # naive: the field's way (made aware, with its warning)
                row[column] = stamp if value is page.now else value.isoformat()
        rows.append(row)
    try:
        document = json.dumps(rows, allow_nan=False)
    except (TypeError, ValueError):
        return None  # a value that is not plain JSON: the field's way
    columns = ", ".join(quote(f.column) for f in fields)
    types = ", ".join(
        f"{quote(f.column)} {str(f.db_type(connection)).split('(')[0]}" for f in fields
    )
    # Names from the model's metadata, quoted; the values go in as the one parameter.
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} ({columns}) "  # noqa: S608
        f"SELECT {columns} FROM json_to_recordset(%s::json) AS page({types}) "
        f"RETURNING {quote(key.column)}, {quote(model._meta.pk.column)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [document])
        return cursor.fetchall()


def _insert_values(page: _Page) -> list[tuple[Any, Any]]:
    connection, model, fields, objs, key, _ = page
    quote = connection.ops.quote_name
    adapters = [_adapter(field, connection) for field in fields]
    head = (
        f"INSERT INTO {quote(model._meta.db_table)} "  # noqa: S608 - quoted names only
        f"({', '.join(quote(f.column) for f in fields)}) VALUES "
    )
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    tail = f" RETURNING {quote(key.column)}, {quote(model._meta.pk.column)}"
    # Within the backend's limit on bound parameters (999 on an old SQLite).
    size = max(1, connection.ops.bulk_batch_size(fields, objs))
    keys: list[tuple[Any, Any]] = []
    # Several statements are all or nothing, as bulk_create's batches are.
    several = len(objs) > size
    with transaction.atomic(using=connection.alias, savepoint=False) if several else nullcontext():
        for start in range(0, len(objs), size):
            batch = objs[start : start + size]
            params = [
                adapt(getattr(obj, field.attname))
                for obj in batch
                for field, adapt in zip(fields, adapters, strict=True)
            ]
            with connection.cursor() as cursor:
                cursor.execute(head + ", ".join([row] * len(batch)) + tail, params)
                keys += cursor.fetchall()
    return keys


def _base_type(field: models.Field[Any, Any], connection: Any) -> str:
    # varchar, not varchar(64): a value too long fails on the INSERT, as it would without us.
    return str(field.db_type(connection)).split("(")[0]


def _any_sql(model: type[models.Model], key: str, names: Sequence[str]) -> tuple[Any, str]:
    """``(connection, "SELECT <names> FROM <table> WHERE <key> = ANY(%s)")``."""
    connection: Any = connections[router.db_for_read(model)]
    quote = connection.ops.quote_name

    def column(name: str) -> str:
        # get_field's type allows a relation; these name our own concrete fields.
        return str(quote(cast("models.Field[Any, Any]", model._meta.get_field(name)).column))

    # Names from the model's metadata, quoted; the keys go in as the one parameter.
    return connection, (
        f"SELECT {', '.join(map(column, names))} "  # noqa: S608
        f"FROM {quote(model._meta.db_table)} WHERE {column(key)} = ANY(%s)"
    )


def by_key(model: type[models.Model], key: str, keys: Collection[Any]) -> dict[Any, Any]:
    """The rows of ``model`` whose ``key`` (a unique field) is one of ``keys``, by key, read
    in one SELECT: ``filter(key__in=keys)``, except that on PostgreSQL the keys are one array
    parameter (``= ANY(%s)``) of a raw query. Django compiles an ``IN`` list value by value
    and psycopg parses a statement with more than 50 parameters afresh on every call (it
    caches only smaller ones): for a page of 100 keys, most of the SELECT's cost. The objects
    are built as ``from_db`` builds them (``_builder``)."""
    if not keys:
        return {}
    meta = model._meta
    fields = meta.concrete_fields
    connection, sql = _any_sql(model, key, [f.name for f in fields])
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql, [list(keys)])
            rows = cursor.fetchall()
        # What the compiler would apply to each column (JSONField's from_db_value, say).
        converters = [
            (i, converter, col)
            for i, field in enumerate(fields)
            for col in [field.get_col(meta.db_table)]
            for converter in connection.ops.get_db_converters(col)
            + field.get_db_converters(connection)
        ]
        if converters:
            rows = [list(row) for row in rows]
            for row in rows:
                for i, converter, col in converters:
                    row[i] = converter(row[i], col, connection)
    else:
        found = model._default_manager.filter(**{f"{key}__in": keys})
        rows = list(found.values_list(*[f.attname for f in fields]))
    build = _builder(model)
    position = [f.attname for f in fields].index(
        cast("models.Field[Any, Any]", meta.get_field(key)).attname
    )
    result = {}
    for row in rows:
        obj = build(row)
        obj._state.adding = False
        obj._state.db = connection.alias
        result[row[position]] = obj
    return result


def values_by_key(
    model: type[models.Model], key: str, keys: Collection[Any], names: Sequence[str]
) -> dict[Any, tuple[Any, ...]]:
    """``values_list(key, *names)`` of the rows whose ``key`` is one of ``keys``, by key: a
    row's columns without building its object. On PostgreSQL one raw SELECT with the keys as
    one array (as ``by_key``), for columns read as they are (no ``from_db_value``)."""
    if not keys:
        return {}
    connection, sql = _any_sql(model, key, (key, *names))
    fields = [model._meta.get_field(name) for name in (key, *names)]
    if connection.vendor != "postgresql" or any(hasattr(f, "from_db_value") for f in fields):
        found = model._default_manager.filter(**{f"{key}__in": keys}).values_list(key, *names)
        return {row[0]: row[1:] for row in found}
    with connection.cursor() as cursor:
        cursor.execute(sql, [list(keys)])
        return {row[0]: row[1:] for row in cursor.fetchall()}


def existing(model: type[models.Model], key: str, keys: Collection[Any]) -> set[Any]:
    """Which of ``keys`` (values of the unique field ``key``) ``model`` has rows for (one
    SELECT of that column alone, as ``values_by_key``)."""
    return set(values_by_key(model, key, keys, ()))


#: Per model, its attnames and its concrete fields in order as ``(attname, default factory or
#: None, default)``: a default that is the same object for every row (none given: None or "";
#: a value, not a callable) is read once, a callable or a database default for each row.
_LAYOUTS: dict[type[models.Model], tuple[frozenset[str], list[tuple[str, Any, Any]]]] = {}


def _layout(model: type[models.Model]) -> tuple[frozenset[str], list[tuple[str, Any, Any]]]:
    layout = [
        (f.attname, f.get_default, None)
        if (f.has_default() and callable(f.default)) or f.has_db_default()
        else (f.attname, None, f.get_default())
        for f in model._meta.concrete_fields
    ]
    _LAYOUTS[model] = frozenset(attname for attname, _, _ in layout), layout
    return _LAYOUTS[model]


def new(model: type[models.Model], values: dict[str, Any]) -> Any:
    """``model(**values)`` (``values`` by attname: ``customer_id``, not ``customer``), built the
    way Django builds a row it read: positionally, without matching each keyword to a field
    (a page of 100 subscriptions builds 200 objects)."""
    attnames, layout = _LAYOUTS.get(model) or _layout(model)
    if not values.keys() <= attnames:
        raise TypeError(f"{model.__name__} has no fields {sorted(values.keys() - attnames)}")
    return _builder(model)(
        [
            values[attname] if attname in values else make() if make else default
            for attname, make, default in layout
        ]
    )


#: Per model: whether ``model(*values)`` does nothing but store each value under its attname
#: (the model's own ``__init__`` is Django's, and each attname is a plain or a foreign key
#: attribute, whose setter only drops a cached related object a new instance cannot have).
_BARE: dict[type[models.Model], bool] = {}


def _bare(model: type[models.Model]) -> bool:
    plain = (DeferredAttribute, ForeignKeyDeferredAttribute)
    _BARE[model] = model.__init__ is models.Model.__init__ and all(
        type(getattr(model, f.attname, None)) in plain for f in model._meta.concrete_fields
    )
    return _BARE[model]


def _builder(model: type[models.Model]) -> Callable[[Sequence[Any]], Any]:
    """``model(*values)`` for values of every concrete field in order. Django's ``__init__``
    costs about 5 µs a row (signals, a ``setattr`` per field); where it would only store the
    values and no one listens to ``pre_init``/``post_init`` for ``model``, they are stored
    directly."""
    if (
        not (_BARE.get(model) if model in _BARE else _bare(model))
        or signals.pre_init.has_listeners(model)
        or signals.post_init.has_listeners(model)
    ):
        return lambda values: model(*values)
    attnames = [f.attname for f in model._meta.concrete_fields]
    blank = object.__new__

    def build(values: Sequence[Any]) -> Any:
        obj = blank(model)
        state = obj.__dict__
        state["_state"] = ModelState()
        state.update(zip(attnames, values, strict=True))
        return obj

    return build
