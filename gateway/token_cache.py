"""Tokens this node verified lately, so a reconnect storm pays for each signature once.

When a node dies or a deploy rolls, its clients come back at once with the tokens they had;
checking each signature again is most of what a handshake costs. A token whose signature (by
the configured secret or PEM key) and claims were accepted is kept here, by a digest rather
than the token itself, with the principal it named, until it expires or ``MAX_AGE`` passes,
whichever is first; a hit is checked for expiry again at the time of use. Tokens verified with
keys from a JWKS are not kept (the provider may withdraw a key at any time), and revocation is
never cached: the handshake asks for it every time.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from gateway.principal import AuthError, Principal

MAX_AGE = 300.0  # seconds: a key the identity provider withdrew stops vouching for a token after this


class VerifiedTokens:
    def __init__(self, capacity: int, leeway: float) -> None:
        self._capacity = capacity
        self._leeway = leeway
        self._entries: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()  # digest -> (who, kept until)

    @staticmethod
    def digest(token: str) -> bytes:
        return hashlib.blake2b(token.encode(), digest_size=16).digest()

    def get(self, digest: bytes, now: float) -> Principal | None:
        """The principal of a token verified before, or None; raises AuthError once it expired."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        principal, kept_until = entry
        if now >= principal.exp + self._leeway:
            del self._entries[digest]
            raise AuthError("expired", "token expired")
        if now >= kept_until:
            del self._entries[digest]
            return None  # verify the signature again
        self._entries.move_to_end(digest)
        return principal

    def put(self, digest: bytes, principal: Principal, now: float) -> None:
        self._entries[digest] = (principal, min(principal.exp + self._leeway, now + MAX_AGE))
        self._entries.move_to_end(digest)
        if len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
