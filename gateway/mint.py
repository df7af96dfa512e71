"""Tokens this gateway signs itself: the single-process mode's ephemeral login and ``--dev-login``.

Production tokens come from an identity provider; nothing here is used to verify them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import jwt


def mint_token(
    secret: str,
    user: str,
    *,
    ttl: float = 3600,
    name: str | None = None,
    roles: Sequence[str] = (),
    now: float | None = None,
) -> str:
    """An HS256 token for ``user`` valid for at least ``ttl`` seconds (ephemeral and dev logins)."""
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": user, "iat": int(issued), "exp": math.ceil(issued + ttl)}
    if name is not None:
        claims["name"] = name
    if roles:
        claims["roles"] = list(roles)
    return jwt.encode(claims, secret, algorithm="HS256")
