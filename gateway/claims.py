"""The claims of a token whose signature is valid, checked and turned into a :class:`Principal`.

PyJWT only checks signatures here; the claims are checked in this module so that tests can pass
``now`` and so that every refusal carries one of the stable :data:`gateway.principal.AuthReason` labels.
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any

from gateway.principal import AuthError, Principal

MAX_SUB_CHARS = 128
MAX_NAME_CHARS = 64
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs"})  # control characters, and lone surrogates that cannot be encoded


def claims_of(payload: bytes) -> dict[str, Any]:
    """The payload of a verified JWS as a JSON object; raises AuthError ``malformed``."""
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError):
        raise AuthError("malformed", "token payload is not JSON") from None
    if not isinstance(claims, dict):
        raise AuthError("malformed", "token payload is not a JSON object")
    return claims


def principal_from(
    claims: dict[str, Any], now: float, *, leeway: float, audience: str | None, issuer: str | None
) -> Principal:
    """Check the claims at unix time ``now`` and build the principal; raises AuthError naming the claim."""
    user = _subject(claims)
    exp = _timestamp(claims, "exp")
    if exp is None:
        raise AuthError("missing_claim", "token has no exp claim")
    if now >= exp + leeway:
        raise AuthError("expired", "token expired")
    nbf = _timestamp(claims, "nbf")
    if nbf is not None and now < nbf - leeway:
        raise AuthError("bad_claim", "token is not valid yet")
    if audience is not None:
        aud = claims.get("aud")
        if audience not in (aud if isinstance(aud, list) else [aud]):
            raise AuthError("audience", "token is meant for another audience")
    if issuer is not None and claims.get("iss") != issuer:
        raise AuthError("issuer", "token comes from another issuer")
    return Principal(user=user, name=_name(claims), roles=_roles(claims), exp=exp, issued=_timestamp(claims, "iat"))


def _is_unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def _subject(claims: dict[str, Any]) -> str:
    sub = claims.get("sub")
    if sub is None:
        raise AuthError("missing_claim", "token has no sub claim")
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_CHARS or any(map(_is_unsafe, sub)):
        raise AuthError("bad_claim", f"sub must be a string of 1-{MAX_SUB_CHARS} printable characters")
    return sub


def _timestamp(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError
        return float(value)
    except (ValueError, OverflowError):
        raise AuthError("bad_claim", f"{name} must be a number of seconds") from None


def _name(claims: dict[str, Any]) -> str | None:
    """The display name, cut to a bounded length; characters that break text or encodings are dropped."""
    name = claims.get("name")
    if name is None:
        return None
    if not isinstance(name, str):
        raise AuthError("bad_claim", "name must be a string")
    cleaned = "".join(char for char in name if not _is_unsafe(char)).strip()[:MAX_NAME_CHARS]
    return cleaned or None


def _roles(claims: dict[str, Any]) -> frozenset[str]:
    roles = claims.get("roles")
    if roles is None:
        return frozenset()
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise AuthError("bad_claim", "roles must be a list of strings")
    return frozenset(roles)
