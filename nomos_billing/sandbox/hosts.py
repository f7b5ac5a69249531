"""The sandbox's production-shaped host names for the portal and the hosted checkout.

Nomos serves the portal on ``https://<brand>.customerportal.energy`` and each plan's checkout on
``https://<plan.slug>.checkout.energy``; the site tells the two apart by host alone
(``nomos_billing.portal.link_kind``). The sandbox mints its links the same way, under
``.localhost`` (RFC 6761: such names are loopback), on its own port:
``http://sandbox.customerportal.localhost:8765/auth/confirm?...`` and
``http://pln-sandbox-home.checkout.localhost:8765/?id=lead_...``. One server answers all of
them and picks the site by the ``Host`` header.

A site accepts these hosts only when it says so: put ``PORTAL_HOSTS`` and ``CHECKOUT_HOSTS``
below into ``NOMOS_BILLING`` (the package's defaults accept Nomos' domains only).

Browsers (Chromium, Firefox) resolve every ``*.localhost`` name to loopback by themselves.
Python does not: ``requests`` and ``urllib`` ask the system resolver, and glibc without
nss-myhostname answers "Name or service not known". ``resolve_localhost()`` makes this process
resolve them as a browser does (the pytest fixtures switch it on).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

PORTAL_SUFFIX = ".customerportal.localhost"
CHECKOUT_SUFFIX = ".checkout.localhost"
#: The brand in the sandbox's portal host.
BRAND = "sandbox"
#: What a site puts into ``NOMOS_BILLING`` to accept the sandbox's links.
PORTAL_HOSTS = [PORTAL_SUFFIX]
CHECKOUT_HOSTS = [CHECKOUT_SUFFIX]

Site = Literal["api", "portal", "checkout"]


def plan_slug(plan: str) -> str:
    """A host label for a plan id: Nomos uses the plan's slug; the sandbox's plans are ids
    (``pln_sandbox_home``) and ``_`` has no place in a host name, so it becomes ``-``."""
    return plan.lower().replace("_", "-")


def plan_of_slug(slug: str) -> str:
    """The plan id a checkout host names (the inverse of ``plan_slug`` for the sandbox's ids)."""
    return slug.replace("-", "_")


def _origin(base_url: str, host: str) -> str:
    parts = urlsplit(base_url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme or 'http'}://{host}{port}"


def portal_origin(base_url: str) -> str:
    """``http://sandbox.customerportal.localhost:<port>`` for a sandbox at ``base_url``."""
    return _origin(base_url, BRAND + PORTAL_SUFFIX)


def checkout_origin(base_url: str, plan: str) -> str:
    """``http://<plan-slug>.checkout.localhost:<port>`` for a sandbox at ``base_url``."""
    return _origin(base_url, plan_slug(plan) + CHECKOUT_SUFFIX)


def site_of(host_header: str) -> tuple[Site, str]:
    """Which of its sites a request's ``Host`` names, and the label before the suffix
    (the brand or the plan's slug); the API for anything else."""
    host = host_header.lower()
    if host.startswith("["):
        host = host.partition("]")[0] + "]"
    else:
        host = host.rpartition(":")[0] if ":" in host else host
    for site, suffix in (("portal", PORTAL_SUFFIX), ("checkout", CHECKOUT_SUFFIX)):
        label = host[: -len(suffix)]
        if host.endswith(suffix) and label and "." not in label:
            return site, label  # type: ignore[return-value]
    return "api", ""


def is_localhost_name(host: Any) -> bool:
    return isinstance(host, str) and (
        host.lower() == "localhost" or host.lower().rstrip(".").endswith(".localhost")
    )


@contextmanager
def resolve_localhost() -> Iterator[None]:
    """Within the block, this process resolves ``*.localhost`` to 127.0.0.1 as browsers do
    (see the module docstring); every other name goes to the system resolver as before."""
    original = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if is_localhost_name(host):
            host = "127.0.0.1"
        return original(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.getaddrinfo = original  # type: ignore[assignment]


def checkout_url(base_url: str, plan: str, **params: str) -> str:
    """The sandbox's stand-in for ``https://{plan.slug}.checkout.energy/?...``: the plan's own
    host under ``.checkout.localhost`` on the sandbox's port."""
    query = urlencode(params)
    return checkout_origin(base_url, plan) + "/" + (f"?{query}" if query else "")
