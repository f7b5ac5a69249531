"""The tokens ``POST /oauth/token`` grants: issued, scoped, expiring, remembered for log scans."""

from __future__ import annotations

import secrets
import time

from .stores import SandboxStores

DEFAULT_SCOPE = "read:* write:*"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
#: ``--token-body``: which bodies ``POST /oauth/token`` takes. Nomos' guides send a form, its
#: document declares JSON; which one production refuses is not documented, so the client's
#: fallback is tested against each.
TOKEN_BODIES: dict[str, frozenset[str]] = {
    "both": frozenset({FORM, JSON}),
    "form": frozenset({FORM}),
    "json": frozenset({JSON}),
}


class Tokens(SandboxStores):
    # -- tokens -------------------------------------------------------------------------------

    def issue_token(self, scope: str | None = None) -> str:
        """A valid access token, as ``POST /oauth/token`` grants (``scope`` overrides)."""
        token = "sbx_at_" + secrets.token_urlsafe(32)
        with self.lock:
            self._tokens[token] = (time.monotonic() + self.token_ttl, scope or self.scope)
            self._issued.append(token)
        return token

    def issue_refresh_token(self) -> str:
        # Never redeemable here (only client_credentials is granted), but still a secret.
        token = "sbx_rt_" + secrets.token_hex(32)
        with self.lock:
            self._issued.append(token)
        return token

    def issued_tokens(self) -> list[str]:
        """Every access and refresh token this sandbox has handed out, valid or not."""
        with self.lock:
            return list(self._issued)

    def token_scope(self, token: str) -> str | None:
        """The scope of a valid token, or None if it is unknown or expired."""
        with self.lock:
            entry = self._tokens.get(token)
            if entry is None:
                return None
            if time.monotonic() >= entry[0]:
                del self._tokens[token]
                return None
            return entry[1]

    def expire_tokens(self) -> None:
        with self.lock:
            self._tokens.clear()
