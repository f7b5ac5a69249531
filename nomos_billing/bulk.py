"""One INSERT for a page of new rows, without Django's per-value compile steps.

A first sync of 100,000 subscriptions spent half its CPU in ``bulk_create`` (issue 22): for
every value of every row the compiler calls the field's ``pre_save``, ``get_db_prep_save`` and
``get_prep_value`` and checks for expressions, and on PostgreSQL packs each column into an
array. The rows a sync inserts hold plain values we built ourselves (``str``, ``int``, aware
``datetime``, a ``dict`` for JSON), so ``insert`` writes them with one multi-row
``INSERT ... RETURNING`` and adapts only what needs it: datetimes through the backend's
``adapt_datetimefield_value`` (what ``DateTimeField`` ends with), JSON and anything unexpected
through the field's own ``get_db_prep_save`` (on PostgreSQL one array per column, as Django's
``UNNEST`` insert). Like ``bulk_create``: primary keys set on the
objects, no signals, ``auto_now``/``auto_now_add`` filled in. Databases other than
PostgreSQL and SQLite get ``bulk_create``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from django.db import connections, models, router

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


def insert(model: type[models.Model], objs: Sequence[models.Model]) -> None:
    """INSERT ``objs`` (new, unsaved ``model`` instances) in one statement and set their
    primary keys; raises ``IntegrityError`` as ``bulk_create`` would."""
    if not objs:
        return
    alias = router.db_for_write(model)
    connection = connections[alias]
    if connection.vendor not in ("postgresql", "sqlite") or not (
        connection.features.can_return_rows_from_bulk_insert
    ):
        model._default_manager.using(alias).bulk_create(objs)
        return
    meta = model._meta
    fields = [f for f in meta.local_concrete_fields if not f.primary_key]
    columns: list[tuple[str, bool, Adapter]] = [
        (
            field.attname,
            bool(getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False)),
            _adapter(field, connection),
        )
        for field in fields
    ]
    quote = connection.ops.quote_name
    head = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
    )
    tail = f" RETURNING {quote(meta.pk.column)}"
    unnest = connection.vendor == "postgresql"
    if unnest:
        # As Django's own PostgreSQL compiler does: one array per column, so the statement is
        # short (psycopg caches its parse) whatever the number of rows.
        types = [field.db_type(connection).split("(")[0] for field in fields]
        head += "SELECT * FROM UNNEST(" + ", ".join(f"(%s)::{t}[]" for t in types) + ")"
        size = len(objs)
    else:
        row = "(" + ", ".join(["%s"] * len(fields)) + ")"
        head += "VALUES "
        # Within the backend's limit on bound parameters (999 on an old SQLite).
        size = max(1, connection.ops.bulk_batch_size(fields, objs))
    for start in range(0, len(objs), size):
        batch = objs[start : start + size]
        rows: list[list[Any]] = []
        for obj in batch:
            values = []
            for (attname, stamped, adapt), field in zip(columns, fields, strict=True):
                # pre_save only where it does something (it also sets the timestamp on obj).
                value = field.pre_save(obj, True) if stamped else getattr(obj, attname)
                values.append(adapt(value))
            rows.append(values)
        if unnest:
            sql, params = head + tail, [list(column) for column in zip(*rows, strict=True)]
        else:
            sql = head + ", ".join([row] * len(batch)) + tail
            params = [value for values in rows for value in values]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            keys = [key for (key,) in cursor.fetchall()]
        # Both databases return the rows in the order given (Django's bulk_create relies on
        # it too).
        for obj, key in zip(batch, keys, strict=True):
            obj.pk = key
            obj._state.adding = False
            obj._state.db = alias
