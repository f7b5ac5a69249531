"""``signatures``: parsing ``X-Nomos-Signature`` and verifying it, as plain functions.

Parametrized cases pin the rules; hypothesis checks the properties on untrusted input: a
signature made by ``sign_payload`` always verifies, any change to body, secret or time beyond
the tolerance never does, and no header text makes the parser raise anything but a
``WebhookError``.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomos_billing import signatures
from nomos_billing.exceptions import (
    WebhookError,
    WebhookSignatureMalformed,
    WebhookSignatureMismatch,
    WebhookSignatureMissing,
    WebhookTimestampOutOfRange,
)
from nomos_billing.signatures import (
    MAX_HEADER_LENGTH,
    compute_signature,
    parse_header,
    sign_payload,
    verify_signature,
)

T = 1_700_000_000
BODY = b'{"id":"evt_1","topic":"invoice.paid","context":{}}'
SECRET = "whsec_test_new"
SECRETS = ["whsec_test_new", "whsec_test_old"]
SIG = compute_signature(SECRET, T, BODY)


def test_compute_signature_is_hmac_sha256_of_t_dot_body():
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert SIG == expected
    assert compute_signature(SECRET.encode(), T, BODY) == expected


def test_sign_payload_formats_the_header():
    assert sign_payload(BODY, SECRET, T) == f"t={T},v1={SIG}"


# -- parse_header ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "timestamp", "signatures"),
    [
        (f"t={T},v1={SIG}", T, (SIG,)),
        (f"v1={SIG},t={T}", T, (SIG,)),
        (f" t = {T} , v1 = {SIG} ", T, (SIG,)),
        (f"t={T},v1={SIG.upper()}", T, (SIG,)),
        (f"t={T},v1={'0' * 64},v1={SIG}", T, ("0" * 64, SIG)),
        (f"t={T},v0=legacy,v2=future,v1={SIG}", T, (SIG,)),
        (f"t=0,v1={SIG}", 0, (SIG,)),
    ],
    ids=["plain", "reordered", "spaces", "upper-case hex", "two v1", "unknown schemes", "t=0"],
)
def test_parse_header_accepts(header, timestamp, signatures):
    parsed = parse_header(header)
    assert (parsed.timestamp, parsed.signatures) == (timestamp, signatures)


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (None, WebhookSignatureMissing),
        ("", WebhookSignatureMissing),
        ("   ", WebhookSignatureMissing),
        (f"v1={SIG}", WebhookSignatureMalformed),
        (f"t={T}", WebhookSignatureMalformed),
        (f"t={T},v0={SIG}", WebhookSignatureMalformed),
        (f"t=abc,v1={SIG}", WebhookSignatureMalformed),
        (f"t=-5,v1={SIG}", WebhookSignatureMalformed),
        (f"t=1.5,v1={SIG}", WebhookSignatureMalformed),
        (f"t=١٢٣,v1={SIG}", WebhookSignatureMalformed),
        (f"t=,v1={SIG}", WebhookSignatureMalformed),
        (f"t={T},t={T},v1={SIG}", WebhookSignatureMalformed),
        (f"t={T},v1={'z' * 64}", WebhookSignatureMalformed),
        (f"t={T},v1={SIG[:-1]}", WebhookSignatureMalformed),
        (f"t={T},v1={SIG}0", WebhookSignatureMalformed),
        (f"t={T},v1=", WebhookSignatureMalformed),
        (f"t={T},v1={SIG},garbage", WebhookSignatureMalformed),
        (f"t={T};v1={SIG}", WebhookSignatureMalformed),
        (f"t={T},v1={SIG}," + "v0=x," * 200, WebhookSignatureMalformed),
        ("x" * (MAX_HEADER_LENGTH + 1), WebhookSignatureMalformed),
    ],
    ids=[
        "none", "empty", "blank", "no t", "no v1", "only v0", "t letters", "t negative",
        "t decimal", "t arabic digits", "t empty", "t twice", "v1 not hex", "v1 short",
        "v1 long", "v1 empty", "item without =", "semicolons", "over 1 KiB", "huge",
    ],
)
def test_parse_header_rejects(header, error):
    with pytest.raises(error):
        parse_header(header)


def test_header_of_exactly_max_length_is_parsed():
    header = f"t={T},v1={SIG},v0="
    header += "x" * (MAX_HEADER_LENGTH - len(header))
    assert len(header) == MAX_HEADER_LENGTH
    assert parse_header(header).timestamp == T


# -- verify_signature --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secrets", "index"),
    [(["whsec_test_new"], 0), (["whsec_test_new", "whsec_test_old"], 0),
     (["whsec_test_old", "whsec_test_new"], 1), (["a", "b", "whsec_test_new"], 2)],
)
def test_verify_returns_the_index_of_the_matching_secret(secrets, index):
    assert verify_signature(BODY, f"t={T},v1={SIG}", secrets, now=T) == index


@pytest.mark.parametrize(
    ("now", "ok"),
    [(T, True), (T + 300, True), (T - 300, True), (T + 300.9, False), (T + 301, False),
     (T - 301, False), (T - 300.5, False), (0, False)],
)
def test_timestamp_window_is_symmetric(now, ok):
    header = f"t={T},v1={SIG}"
    if ok:
        assert verify_signature(BODY, header, SECRETS, now=now) == 0
    else:
        with pytest.raises(WebhookTimestampOutOfRange, match="300 s"):
            verify_signature(BODY, header, SECRETS, now=now)


@pytest.mark.parametrize("tolerance", [0, 5, 3600])
def test_tolerance_is_configurable(tolerance):
    header = f"t={T},v1={SIG}"
    assert verify_signature(BODY, header, SECRETS, tolerance=tolerance, now=T + tolerance) == 0
    with pytest.raises(WebhookTimestampOutOfRange):
        verify_signature(BODY, header, SECRETS, tolerance=tolerance, now=T + tolerance + 1)


def test_timestamp_is_checked_before_the_signature():
    with pytest.raises(WebhookTimestampOutOfRange):
        verify_signature(BODY, f"t={T},v1={'0' * 64}", SECRETS, now=T + 1000)


@pytest.mark.parametrize(
    ("body", "header", "secrets"),
    [
        (BODY, f"t={T},v1={SIG}", ["whsec_other"]),
        (BODY, f"t={T},v1={SIG}", []),
        (BODY + b" ", f"t={T},v1={SIG}", SECRETS),
        (BODY.replace(b"evt_1", b"evt_2"), f"t={T},v1={SIG}", SECRETS),
        (BODY, f"t={T + 1},v1={SIG}", SECRETS),
        (b'{"id": "evt_1", "topic": "invoice.paid", "context": {}}', f"t={T},v1={SIG}",
         SECRETS),
        (BODY, f"t={T},v1={compute_signature(SECRET, T, b'')}", SECRETS),
    ],
    ids=["other secret", "no secrets", "trailing space", "one field changed",
         "timestamp changed", "re-serialised JSON", "signature of empty body"],
)
def test_mismatches_are_refused(body, header, secrets):
    with pytest.raises(WebhookSignatureMismatch, match="does not match"):
        verify_signature(body, header, secrets, now=T)


def test_error_messages_never_contain_a_secret_or_the_signature():
    for secrets, now in ((["whsec_secret_value"], T), (SECRETS, T + 999)):
        with pytest.raises(WebhookError) as info:
            verify_signature(BODY, f"t={T},v1={'0' * 64}", secrets, now=now)
        assert "whsec" not in str(info.value) and "0" * 64 not in str(info.value)


# -- constant-time comparison ------------------------------------------------------------------


def test_every_signature_comparison_is_hmac_compare_digest(monkeypatch):
    """``==`` leaks, by its timing, how much of a forged signature is right."""
    real = hmac.compare_digest
    calls: list[tuple[str, str]] = []

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signatures.hmac, "compare_digest", spy)
    wrong = "0" * 64
    header = f"t={T},v1={wrong},v1={SIG}"
    assert verify_signature(BODY, header, ["whsec_other", SECRET], now=T) == 1
    # Every secret against every v1, also after the match, so timing cannot tell which matched.
    other = compute_signature("whsec_other", T, BODY)
    assert calls == [(other, wrong), (other, SIG), (SIG, wrong), (SIG, SIG)]


def test_the_comparison_decides_the_outcome(monkeypatch):
    monkeypatch.setattr(signatures.hmac, "compare_digest", lambda a, b: False)
    with pytest.raises(WebhookSignatureMismatch):
        verify_signature(BODY, f"t={T},v1={SIG}", SECRETS, now=T)


# -- properties --------------------------------------------------------------------------------

bodies = st.binary(max_size=2048)
secrets_st = st.text(min_size=1, max_size=64).filter(lambda s: "\x00" not in s)
timestamps = st.integers(min_value=0, max_value=2**40)


@given(body=bodies, secret=secrets_st, t=timestamps,
       skew=st.integers(min_value=-300, max_value=300))
def test_property_signed_payload_always_verifies(body, secret, t, skew):
    header = sign_payload(body, secret, t)
    assert verify_signature(body, header, ["unrelated", secret], now=t + skew) in (0, 1)


@given(body=bodies, secret=secrets_st, t=timestamps, data=st.data())
def test_property_any_changed_byte_is_refused(body, secret, t, data):
    header = sign_payload(body, secret, t)
    changed = data.draw(bodies.filter(lambda b: b != body), label="other body")
    with pytest.raises(WebhookSignatureMismatch):
        verify_signature(changed, header, [secret], now=t)


@given(body=bodies.filter(bool), secret=secrets_st, t=timestamps, data=st.data())
def test_property_flipping_one_bit_is_refused(body, secret, t, data):
    header = sign_payload(body, secret, t)
    position = data.draw(st.integers(0, len(body) - 1))
    bit = data.draw(st.integers(0, 7))
    changed = bytearray(body)
    changed[position] ^= 1 << bit
    with pytest.raises(WebhookSignatureMismatch):
        verify_signature(bytes(changed), header, [secret], now=t)


@given(body=bodies, secret=secrets_st, other=secrets_st, t=timestamps)
def test_property_other_secret_is_refused(body, secret, other, t):
    if other == secret:
        return
    with pytest.raises(WebhookSignatureMismatch):
        verify_signature(body, sign_payload(body, secret, t), [other], now=t)


@given(t=timestamps, skew=st.integers(min_value=301, max_value=10**9),
       sign=st.sampled_from([-1, 1]))
def test_property_outside_window_is_refused(t, skew, sign):
    header = sign_payload(BODY, SECRET, t)
    with pytest.raises(WebhookTimestampOutOfRange):
        verify_signature(BODY, header, [SECRET], now=t + sign * skew)


@given(header=st.one_of(
    st.text(max_size=2000),
    st.lists(st.tuples(st.sampled_from(["t", "v1", "v0", " t", "v1 ", ""]),
                       st.text(alphabet="0123456789abcdefxyz -=,", max_size=80)),
             max_size=6).map(lambda items: ",".join(f"{k}={v}" for k, v in items)),
))
def test_property_arbitrary_headers_raise_only_webhook_errors(header):
    # No generated text carries a valid HMAC of BODY, so every one must be refused, and only
    # with a WebhookError (the view turns exactly those into 400).
    with pytest.raises(WebhookError):
        verify_signature(BODY, header, SECRETS, now=T)


@given(body=bodies, secret=secrets_st, t=timestamps)
def test_property_parse_roundtrips_sign_payload(body, secret, t):
    parsed = parse_header(sign_payload(body, secret, t))
    assert parsed.timestamp == t
    assert parsed.signatures == (compute_signature(secret, t, body),)
