"""Model instances built the way Django builds a row it read, for pages of rows.

``model(*values)`` costs about 5 µs a row in Django's ``__init__`` (the ``pre_init`` and
``post_init`` signals, a ``setattr`` per field); a sync's page builds up to 200. Where that
``__init__`` would only store the values (``builder``), they are stored directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.db import models
from django.db.models import signals
from django.db.models.base import ModelState
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.query_utils import DeferredAttribute

#: Per model, its attnames and its concrete fields in order as ``(attname, default factory or
#: None, default)``: a default that is the same object for every row (none given: None or "";
#: a value, not a callable) is read once, a callable or a database default for each row.
_LAYOUTS: dict[type[models.Model], tuple[frozenset[str], list[tuple[str, Any, Any]]]] = {}


def layout(model: type[models.Model]) -> tuple[frozenset[str], list[tuple[str, Any, Any]]]:
    """``model``'s attnames and fields as ``_LAYOUTS`` keeps them."""
    if model in _LAYOUTS:
        return _LAYOUTS[model]
    fields = [
        (f.attname, f.get_default, None)
        if (f.has_default() and callable(f.default)) or f.has_db_default()
        else (f.attname, None, f.get_default())
        for f in model._meta.concrete_fields
    ]
    _LAYOUTS[model] = frozenset(attname for attname, _, _ in fields), fields
    return _LAYOUTS[model]


def new(model: type[models.Model], values: dict[str, Any]) -> Any:
    """``model(**values)`` (``values`` by attname: ``customer_id``, not ``customer``), built the
    way Django builds a row it read: positionally, without matching each keyword to a field
    (a page of 100 subscriptions builds 200 objects)."""
    return maker(model)(values)


def maker(model: type[models.Model]) -> Callable[[dict[str, Any]], Any]:
    """``new`` for many rows: what decides how to build them is looked at once."""
    attnames, fields = layout(model)
    build = builder(model)

    def make_one(values: dict[str, Any]) -> Any:
        if not values.keys() <= attnames:
            raise TypeError(f"{model.__name__} has no fields {sorted(values.keys() - attnames)}")
        return build(
            [
                values[attname] if attname in values else make() if make else default
                for attname, make, default in fields
            ]
        )

    return make_one


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


def builder(model: type[models.Model]) -> Callable[[Sequence[Any]], Any]:
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
