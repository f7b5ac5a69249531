"""E-mail addresses compared strictly, and shown masked.

Every rule that links by address (``by_email``, and the binding of lead and reference links in
``linking``) asks ``same_address`` and nothing else. Two addresses are the same only when both
are plain ASCII and equal after ASCII lower-casing, compared here in Python.

Why so strict: Unicode case folding makes different addresses equal. PostgreSQL's
case-insensitive comparison (``iexact`` is ``UPPER(a) = UPPER(b)``) folds the dotless i
(U+0131) to ``I``, the long s (U+017F) to ``S`` and the Kelvin sign (U+212A) to ``K``, so
``newcomer@gma<dotless i>l.com`` (a domain an attacker can own, and verify an address at) "equals"
``newcomer@gmail.com``. An address with any non-ASCII character (an internationalised domain, a
fullwidth at sign U+FF20, a mixed-script look-alike) therefore never matches automatically;
an operator or the customer's own mailbox decides instead. A trailing dot, surrounding spaces
or a second ``@`` make another address too.
"""

from __future__ import annotations

__all__ = ["mask_address", "mask_name", "normalized_address", "same_address"]


def normalized_address(value: object) -> str | None:
    """The ASCII-lower-cased address, or ``None`` when ``value`` is not a plain ASCII address
    of the form ``local@domain`` (one ``@``, no whitespace or control characters, no trailing
    dot)."""
    if not isinstance(value, str) or not value or not value.isascii() or len(value) > 254:
        return None
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return None
    local, at, domain = value.partition("@")
    if not at or not local or not domain or "@" in domain:
        return None
    if domain.startswith(".") or domain.endswith(".") or ".." in domain:
        return None
    # str.lower() on an ASCII string changes only A-Z: no Unicode folding is involved.
    return value.lower()


def same_address(a: object, b: object) -> bool:
    """True when ``a`` and ``b`` are the same plain ASCII address, ignoring ASCII case."""
    left = normalized_address(a)
    return left is not None and left == normalized_address(b)


def _mask(part: str, keep: int = 1) -> str:
    if not part:
        return ""
    return part[:keep] + "\u2022" * min(max(len(part) - keep, 3), 8)


def mask_address(value: object) -> str:
    """``a•••••@e••••••.com``: enough for a person to recognise their own address, too little
    for anyone else to learn it. Empty for a missing value."""
    if not isinstance(value, str) or not value:
        return ""
    local, at, domain = value.rpartition("@")
    if not at:
        return mask_name(value)
    host, dot, tld = domain.rpartition(".")
    masked_domain = f"{_mask(host)}.{tld}" if dot and host else _mask(domain)
    return f"{_mask(local)}@{masked_domain}"


def mask_name(value: object) -> str:
    """A login name (or an address) masked for a page or a mail: its first character only."""
    if not isinstance(value, str) or not value:
        return ""
    if "@" in value:
        return mask_address(value)
    return _mask(value)
