"""filters.py on its own: each operator decides as Nomos would, on the values that tell one
operator from another (a suffix that is not equal, a ``None`` under ``ne``), on dates Nomos
could not have produced, and on pages that hold something other than plain dicts."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from nomos_billing.exceptions import NomosFilterIgnored
from nomos_billing.filters import ListFilter, check_page, query_params


@pytest.mark.parametrize(("operator", "value", "actual", "matches"), [
    # eq is the whole value: a longer value that ends with it is not equal.
    ("eq", "cus_a", "cus_a", True),
    ("eq", "cus_a", "xcus_a", False),
    ("eq", "cus_a", None, False),
    # A missing value is "not equal" to anything, and matches no other string operator.
    ("ne", "ended", None, True),
    ("ne", "ended", "ended", False),
    ("in", ["a", "b"], None, False),
    ("contains", "ln", None, False),
    ("starts_with", "pln", None, False),
    ("ends_with", "_x", None, False),
    # contains anywhere, not only at either end.
    ("contains", "ln_", "pln_x", True),
    ("contains", "zz", "pln_x", False),
    ("contains", "_x", "pln_x", True),
    ("starts_with", "pln", "pln_x", True),
    ("starts_with", "_x", "pln_x", False),
    ("ends_with", "_x", "pln_x", True),
    ("ends_with", "pln", "pln_x", False),
    # A number is compared as Nomos prints it.
    ("eq", "7", 7, True),
    ("in", ["7", "8"], 8, True),
])
def test_each_string_operator(operator: str, value: Any, actual: Any, matches: bool) -> None:
    assert ListFilter("field", operator, value).matches({"field": actual}) is matches


@pytest.mark.parametrize("actual", [
    5,  # not a string: no date, and no exception from the parser
    "",
    "2026-02-30T00:00:00Z",  # well-formed, but no such day: the parser raises
    "yesterday",
])
@pytest.mark.parametrize("operator", ["gte", "lte"])
def test_a_value_that_is_no_date_matches_no_date_filter(actual: Any, operator: str) -> None:
    assert ListFilter("updated_at", operator, "2026-01-01T00:00:00Z").matches(
        {"updated_at": actual}) is False


def test_an_embedded_object_is_compared_by_its_id() -> None:
    flt = ListFilter("customer", "eq", "cus_a")
    assert flt.matches({"customer": {"id": "cus_a", "email": "a@example.com"}}) is True
    assert flt.matches({"customer": {"id": "cus_b"}}) is False
    assert flt.matches({"customer": {}}) is False


def test_a_wrong_filter_is_refused_with_a_message_that_names_it() -> None:
    with pytest.raises(ValueError, match=r"^unknown filter operator 'like'$"):
        ListFilter("email", "like", "a")
    with pytest.raises(ValueError,
                       match=r"^filter on 'updated_at' needs a datetime, got 'yesterday'$"):
        ListFilter("updated_at", "gte", "yesterday")


def test_query_params_name_each_filter_as_nomos_documents() -> None:
    assert query_params([
        ListFilter("status", "in", ["pending", "active"]),
        ListFilter("plan", "is_null", "true"),
        ListFilter("updated_at", "gte", "2026-01-01T01:00:00+01:00"),
    ]) == {
        "filter[status][in]": "pending,active",
        "filter[plan][is_null]": "true",
        "filter[updated_at][gte]": "2026-01-01T00:00:00Z",
    }


def test_a_page_of_mappings_that_match_passes() -> None:
    flt = ListFilter("status", "eq", "active")
    check_page("/subscriptions", [{"id": "sub_1", "status": "active"},
                                  MappingProxyType({"id": "sub_2", "status": "active"})], [flt])


def test_a_page_with_an_item_that_is_no_object_is_refused() -> None:
    flt = ListFilter("status", "eq", "active")
    with pytest.raises(NomosFilterIgnored) as info:
        check_page("/subscriptions", [{"id": "sub_1", "status": "active"}, "sub_2"], [flt])
    assert (info.value.filter, info.value.item_id, info.value.path) == (
        "an item that is not an object", "", "/subscriptions")


def test_a_page_with_one_item_that_does_not_match_names_it_and_the_filter() -> None:
    flt = ListFilter("status", "eq", "active")
    with pytest.raises(NomosFilterIgnored) as info:
        check_page("/subscriptions", [{"id": "sub_1", "status": "active"},
                                      {"id": "sub_2", "status": "ended"}], [flt])
    assert (info.value.filter, info.value.item_id, info.value.path) == (
        "filter[status][eq]=active", "sub_2", "/subscriptions")


def test_an_item_without_an_id_is_named_by_a_question_mark() -> None:
    with pytest.raises(NomosFilterIgnored) as info:
        check_page("/subscriptions", [{"status": "ended"}], [ListFilter("status", "eq", "active")])
    assert info.value.item_id == "?"
    assert "item ? does not match filter[status][eq]=active" in str(info.value)


def test_a_page_without_filters_is_not_checked() -> None:
    check_page("/subscriptions", ["not an object"], [])
