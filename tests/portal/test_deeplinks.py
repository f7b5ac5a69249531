"""``deeplinks.clean_next``: which ``next`` values may choose the portal page.

Parametrized cases pin the grammar (plain ASCII absolute paths only); hypothesis checks the
property on arbitrary text: whatever is accepted matches the safe grammar, and joined onto the
portal URL it never changes the scheme or host.
"""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomos_billing.deeplinks import MAX_LENGTH, clean_next, is_safe_path, preview

PORTAL = "https://brand.customerportal.energy/auth/confirm?token_hash=x&type=magiclink"
GRAMMAR = re.compile(r"\A/([A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*/?)?\Z")

SAFE = [
    "/invoices/inv_abc",
    "/overview",
    "/",
    "/invoices/",
    "/contracts/sub_123/meter-readings",
    "/a.b/c-d_e",
    "/" + "a" * (MAX_LENGTH - 1),
]

# Our own hostile values: other hosts, schemes, traversal, encodings, look-alikes, injection.
HOSTILE = [
    "//evil.com",
    "///evil.com",
    "https://evil.com",
    "http://evil.com/invoices",
    "/\\evil.com",
    "\\\\evil.com",
    "/\\/evil.com",
    "\\/evil.com",
    "/%2F%2Fevil.com",
    "/%2f%2fevil.com",
    "/%5Cevil.com",
    "/%0d%0aSet-Cookie:x",
    "/\r\nSet-Cookie: x=1",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "/../../x",
    "/invoices/../../evil",
    "/./invoices",
    "/invoices/.",
    "/...",
    "/..",
    "/" + "a" * (5 * 1024),
    "/" + "a" * MAX_LENGTH,
    "/\u2215evil.com",  # DIVISION SLASH
    "/\uff0fevil.com",  # FULLWIDTH SOLIDUS
    "/\u2044evil.com",  # FRACTION SLASH
    "\u2215\u2215evil.com",
    "/inv\u0430ices",  # Cyrillic a
    "/invoices/\u0661\u0662",  # Arabic-Indic digits
    "/\tinvoices",
    "/invoices\n",
    "/invoices\x00",
    "/invoices\x7f",
    " /invoices",
    "/invoices ",
    "/user@evil.com",
    "@evil.com",
    "/invoices:8080",
    "evil.com",
    "invoices",
    "/invoices?next=//evil.com",
    "/invoices#frag",
    "/invoices//x",
    "/inv%61ices",
    "",
    "/\x0b",
    "/invoices;evil",
    "/~admin",
    "/in voices",
]


@pytest.mark.parametrize("value", SAFE)
def test_plain_absolute_path_is_kept_unchanged(value: str) -> None:
    assert clean_next(value) == value


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_value_is_dropped(value: str) -> None:
    assert clean_next(value) is None


@pytest.mark.parametrize("value", [None, 42, b"/invoices", ["/invoices"]])
def test_non_string_is_dropped(value: object) -> None:
    assert clean_next(value) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prefixes", "value", "kept"),
    [
        (["/invoices/"], "/invoices/inv_abc", True),
        (["/invoices/"], "/invoices", True),
        (["/invoices/"], "/overview", False),
        (["/overview"], "/overview", True),
        (["/overview"], "/overview/x", True),
        (["/overview"], "/overviewer", False),
        ([], "/overview", False),
        (None, "/anything", True),
        (["/invoices/"], "//evil.com", False),
    ],
)
def test_prefix_allow_list_limits_the_accepted_paths(
    settings, prefixes: list[str] | None, value: str, kept: bool
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "PORTAL_NEXT_PREFIXES": prefixes}
    assert (clean_next(value) == value) is kept


@given(st.text(max_size=300))
def test_anything_accepted_matches_the_grammar_and_keeps_the_portal_host(value: str) -> None:
    cleaned = clean_next(value)
    if cleaned is None:
        return
    assert cleaned == value
    assert GRAMMAR.match(cleaned)
    assert ".." not in cleaned.split("/") and "." not in cleaned.split("/")
    joined = urlsplit(urljoin(PORTAL, cleaned))
    assert (joined.scheme, joined.netloc) == ("https", "brand.customerportal.energy")


@given(st.from_regex(GRAMMAR, fullmatch=True))
def test_anything_in_the_grammar_without_dot_segments_is_accepted(value: str) -> None:
    dot_segment = any(s and set(s) == {"."} for s in value.split("/"))
    assert is_safe_path(value) is (len(value) <= MAX_LENGTH and not dot_segment)


@given(st.text(alphabet=st.sampled_from("/\\.:@%?#a\u2215\uff0f\t\n "), max_size=40))
def test_slash_and_dot_soup_never_escapes_the_portal_host(value: str) -> None:
    cleaned = clean_next(value)
    if cleaned is not None:
        joined = urlsplit(urljoin(PORTAL, cleaned))
        assert joined.netloc == "brand.customerportal.energy"


def test_preview_is_short_and_escaped() -> None:
    text = preview("/\r\nSet-Cookie:" + "x" * 5000)
    assert "\r" not in text and "\n" not in text
    assert len(text) < 120 and "5014 chars" in text


@pytest.mark.parametrize(
    ("prefixes", "value", "kept"),
    [
        # An empty or non-string entry is skipped, not a wildcard, and not the end of the list.
        ([""], "/overview", False),
        ([None, "/overview"], "/overview", True),
        (["", "/overview"], "/overview", True),
        # "/FAX/" allows "/FAX" itself: only the trailing slash is dropped for that match.
        (["/FAX/"], "/FAX", True),
        (["/FAX/"], "/FA", False),
    ],
)
def test_prefix_list_entries_are_matched_one_by_one(
    settings, prefixes: list[object], value: str, kept: bool
) -> None:
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, "PORTAL_NEXT_PREFIXES": prefixes}
    assert (clean_next(value) == value) is kept


def test_preview_keeps_the_first_sixty_characters_and_the_length() -> None:
    assert preview("a" * 100) == repr("a" * 60) + "... (100 chars)"
    assert preview("a" * 60) == repr("a" * 60)
    assert preview(None) == "<NoneType>"
