"""Route table entries: which handler serves which "METHOD /template", and what it needs."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .http import Response

Handler = Callable[..., "Response"]
Kind = Literal["api", "page", "control"]
#: Which host serves the route: the API's own, or the portal's or a checkout's (``hosts.py``).
Site = Literal["api", "portal", "checkout"]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Handler
    kind: Kind = "api"
    # None: no bearer token (the token endpoint, pages, control); else "read" or "write".
    scope: str | None = "read"
    site: Site = "api"
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.template))
        object.__setattr__(self, "pattern", re.compile(f"^{regex}/?$"))

    @property
    def key(self) -> str:
        """How calls are counted and faults armed: ``GET /subscriptions/{id}``, and for the
        pages of the portal and checkout hosts ``GET portal:/auth/confirm``."""
        return f"{self.method} {self.label}"

    @property
    def label(self) -> str:
        return self.template if self.site == "api" else f"{self.site}:{self.template}"

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.match(path)
        return found.groupdict() if found else None


def resolve(
    routes: list[Route], method: str, path: str
) -> tuple[Route | None, dict[str, str], list[Route]]:
    """The route for method+path, its path params, and routes matching the path only (405)."""
    same_path: list[Route] = []
    for route in routes:
        params = route.match(path)
        if params is None:
            continue
        if route.method == method:
            return route, params, same_path
        same_path.append(route)
    return None, {}, same_path
