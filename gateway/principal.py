"""Who a verified token names, and why a token was refused: plain data, no I/O.

The sans-I/O session and the HTTP handlers use these without pulling in JWT, HTTP or crypto code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

AuthReason = Literal[
    "missing",
    "malformed",
    "expired",
    "bad_signature",
    "bad_algorithm",
    "missing_claim",
    "bad_claim",
    "audience",
    "issuer",
    "unknown_key",
    "keys_unavailable",
    "revoked",
]
#: Every reason, so metrics can create their label values up front.
AUTH_REASONS: tuple[AuthReason, ...] = get_args(AuthReason)


@dataclass(frozen=True)
class Principal:
    """The verified caller of one connection or request."""

    user: str
    name: str | None
    roles: frozenset[str]
    exp: float  # unix seconds; the connection must be refreshed or closed by then
    issued: float | None = None  # iat: tokens issued before a revocation of the user are refused

    @property
    def is_admin(self) -> bool:
        """True when the token grants the ``admin`` role (may act on every bot)."""
        return "admin" in self.roles


class AuthError(Exception):
    """A token was missing or not acceptable; answer 401 (or ``error unauthorized`` on a live socket)."""

    def __init__(self, reason: AuthReason, message: str) -> None:
        super().__init__(message)
        self.reason: AuthReason = reason  # stable label for metrics and logs
        self.message = message  # human text, safe to send to the client (never contains the token)
