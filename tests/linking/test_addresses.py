"""One strict address comparison for every rule that links by address.

Look-alike addresses (the dotless i, the long s, the Kelvin sign, a fullwidth at sign, a
trailing dot, a mixed-script domain) must never match automatically, on SQLite and on
PostgreSQL (whose ``UPPER()`` folds some of them into ASCII); the same ASCII address, in any
ASCII case, must.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.test import Client

from nomos_billing.addresses import mask_address, normalized_address, same_address
from nomos_billing.linking import EMAIL_CANDIDATES
from nomos_billing.models import NomosCustomer, NomosLinkClaim
from nomos_billing.sandbox import seed
from nomos_billing.testing import make_event, post_event

#: The Nomos customer's address in these tests: it has an i, a k and an s to imitate.
ALICE = "kiss@example.com"

#: Addresses a person could register (and verify) that are not ``ALICE``.
LOOK_ALIKES = {
    "dotless-i": "k\u0131ss@example.com",
    "long-s": "ki\u017fs@example.com",
    "kelvin": "\u212aiss@example.com",
    "fullwidth-at": "kiss\uff20example.com",
    "trailing-dot": "kiss@example.com.",
    "mixed-script": "kiss@exampl\u0435.com",  # Cyrillic e
    "two-ats": "kiss@example.com@evil.test",
}


def test_look_alike_fixtures_really_fold_into_ascii_somewhere() -> None:
    # The point of these cases: a Unicode-aware comparison calls them the same address.
    for name in ("dotless-i", "long-s", "kelvin"):
        folded = LOOK_ALIKES[name].upper().lower()
        assert folded == ALICE, name


@pytest.mark.parametrize("address", LOOK_ALIKES.values(), ids=LOOK_ALIKES.keys())
def test_a_look_alike_is_never_the_same_address(address: str) -> None:
    assert not same_address(address, ALICE)
    assert not same_address(ALICE, address)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("sam@example.com", "\u017fam@example.com"),
        ("kim@example.com", "\u212aim@example.com"),
        ("k@example.com", "\u212a@example.com"),
    ],
)
def test_unicode_case_folding_does_not_make_two_addresses_one(a: str, b: str) -> None:
    assert not same_address(a, b)


@pytest.mark.parametrize("other", [ALICE, "Kiss@Example.COM", "KISS@EXAMPLE.COM"])
def test_the_same_ascii_address_in_any_ascii_case_matches(other: str) -> None:
    assert same_address(other, ALICE)


@pytest.mark.parametrize("value", [None, "", 42, "alice", "@example.com", "alice@", "a@.b",
                                   "a@b..c", "a\x00@b.c", "a\t@b.c",
                                   " kiss@example.com", "kiss@example.com ", "a@b@c.d"])
def test_what_is_not_an_address_matches_nothing(value: Any) -> None:
    assert normalized_address(value) is None
    assert not same_address(value, value)


def test_a_login_name_that_is_an_address_is_masked_as_one() -> None:
    from nomos_billing.addresses import mask_name

    assert mask_name("alice@example.com") == mask_address("alice@example.com")
    assert mask_name("alice") == "a\u2022\u2022\u2022\u2022"


@pytest.mark.parametrize("value", ["", None, 12345, ["alice"]])
def test_a_missing_or_odd_login_name_is_masked_to_nothing(value: Any) -> None:
    from nomos_billing.addresses import mask_name

    assert mask_name(value) == ""


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("alice@example.com", "a" + "\u2022" * 4 + "@e" + "\u2022" * 6 + ".com"),
        ("a@b.c", "a\u2022\u2022\u2022@b\u2022\u2022\u2022.c"),
        ("", ""),
        (None, ""),
        (12345, ""),
        ("nodomain", "n\u2022\u2022\u2022\u2022\u2022\u2022\u2022"),
    ],
)
def test_masked_addresses_keep_only_first_letters_and_the_top_level_domain(
    value: Any, masked: str
) -> None:
    assert mask_address(value) == masked


# -- through the webhook, on the database the suite runs on ----------------------------------


def deliver_alice(nomos: Any, settings: Any, **setting: Any) -> NomosCustomer:
    """Nomos' customer ``ALICE`` signs a contract; its subscription.created arrives."""
    nomos.customers[seed.ALICE]["email"] = ALICE
    settings.NOMOS_BILLING = {**settings.NOMOS_BILLING, **setting}
    event = make_event("subscription.created", {"subscription": seed.ALICE_SUBSCRIPTION})
    assert post_event(Client(), event).status_code == 200
    return NomosCustomer.objects.get(customer_id=seed.ALICE)


@pytest.mark.django_db
@pytest.mark.parametrize("address", LOOK_ALIKES.values(), ids=LOOK_ALIKES.keys())
def test_by_email_never_links_a_look_alike_account(
    nomos: Any, settings: Any, django_user_model: Any, address: str
) -> None:
    user = django_user_model.objects.create_user("lookalike", address, "pw")
    # Stored as given: the database must not have normalised the look-alike away.
    assert django_user_model.objects.get(pk=user.pk).email == address

    customer = deliver_alice(nomos, settings, LINK_BY_EMAIL=True)

    assert customer.email == ALICE
    assert customer.user is None


@pytest.mark.django_db
@pytest.mark.parametrize("address", [ALICE, "Kiss@Example.COM"])
def test_by_email_links_the_exact_ascii_address(
    nomos: Any, settings: Any, django_user_model: Any, address: str
) -> None:
    # A look-alike account beside the real one changes nothing.
    django_user_model.objects.create_user("lookalike", LOOK_ALIKES["dotless-i"], "pw")
    user = django_user_model.objects.create_user("alice", address, "pw")

    customer = deliver_alice(nomos, settings, LINK_BY_EMAIL=True)

    assert (customer.user, customer.linked_by) == (user, "by_email")


@pytest.mark.django_db
def test_by_email_links_nobody_when_two_accounts_share_the_address(
    nomos: Any, settings: Any, django_user_model: Any
) -> None:
    django_user_model.objects.create_user("alice", ALICE, "pw")
    django_user_model.objects.create_user("alice2", ALICE.upper(), "pw")
    assert deliver_alice(nomos, settings, LINK_BY_EMAIL=True).user is None


def case_variants(address: str, count: int) -> list[str]:
    """``count`` spellings of ``address`` that differ only in ASCII case."""
    local, _, domain = address.partition("@")
    return [
        "".join(c.upper() if i >> n & 1 else c for n, c in enumerate(local)) + "@" + domain
        for i in range(count)
    ]


@pytest.mark.django_db
@pytest.mark.parametrize(("accounts", "warned"), [(EMAIL_CANDIDATES, False),
                                                  (EMAIL_CANDIDATES + 1, True)])
def test_by_email_gives_up_and_says_so_past_ten_accounts_sharing_the_address(
    nomos: Any, settings: Any, django_user_model: Any, caplog: Any, accounts: int, warned: bool
) -> None:
    for i, address in enumerate(case_variants(ALICE, accounts)):
        django_user_model.objects.create_user(f"variant{i}", address, "pw")
    with caplog.at_level(logging.WARNING, logger="nomos_billing.linking"):
        assert deliver_alice(nomos, settings, LINK_BY_EMAIL=True).user is None
    warning = (f"Nomos customer {seed.ALICE}: more than {EMAIL_CANDIDATES} accounts share its "
               "e-mail address apart from case; not linked by e-mail")
    assert (warning in caplog.messages) is warned


@pytest.mark.django_db
def test_by_email_finds_the_one_account_among_many_with_other_addresses(
    nomos: Any, settings: Any, django_user_model: Any
) -> None:
    for i in range(EMAIL_CANDIDATES + 1):
        django_user_model.objects.create_user(f"other{i}", f"other{i}@example.com", "pw")
    user = django_user_model.objects.create_user("alice", ALICE, "pw")
    assert deliver_alice(nomos, settings, LINK_BY_EMAIL=True).user == user


@pytest.mark.django_db
@pytest.mark.parametrize("address", LOOK_ALIKES.values(), ids=LOOK_ALIKES.keys())
def test_a_signed_reference_of_a_look_alike_account_is_held_not_linked(
    nomos: Any, settings: Any, django_user_model: Any, address: str
) -> None:
    from nomos_billing.linking import user_reference

    user = django_user_model.objects.create_user("lookalike", address, "pw")
    nomos.subscriptions[seed.ALICE_SUBSCRIPTION]["metadata"] = {
        "django_user_id": user_reference(user)
    }

    customer = deliver_alice(nomos, settings)

    assert customer.user is None
    assert NomosLinkClaim.objects.get().user == user


@pytest.mark.postgres
@pytest.mark.django_db
def test_postgresql_iexact_would_have_matched_the_look_alikes(django_user_model: Any) -> None:
    """Why ``by_email`` decides in Python: the database's own comparison folds them."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's UPPER() folding: runs on the PostgreSQL run (DATABASE_URL)")
    django_user_model.objects.create_user("lookalike", LOOK_ALIKES["dotless-i"], "pw")
    assert django_user_model.objects.filter(email__iexact=ALICE).exists()


def test_an_address_longer_than_254_characters_is_no_address() -> None:
    longest = "a" * 242 + "@example.com"
    assert len(longest) == 254 and normalized_address(longest) == longest
    assert normalized_address("a" + longest) is None
