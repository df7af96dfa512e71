"""Who is calling: bearer-token (JWT) verification for the handshake, refreshes and the HTTP API.

``TokenVerifier.verify(token)`` turns a token into a :class:`Principal` or raises
:class:`AuthError`, whose ``reason`` is a short stable label that is safe as a metric label.

Which algorithms a token may use follows from the configured keys, never from the token: an
HMAC secret allows HS256/384/512, a PEM public key or a JWKS key allows only the asymmetric
algorithms of its own key type. ``alg: none`` and HS/RS confusion (an HS256 token "signed"
with the public key's PEM text) are therefore rejected before any signature is computed.

PyJWT checks signatures; the claims are checked here so that tests can pass ``now``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

import aiohttp
import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from shared.settings import Settings, SettingsError

log = logging.getLogger(__name__)

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

_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_ASYMMETRIC_ALGORITHMS = _RSA_ALGORITHMS | frozenset(_EC_ALGORITHMS.values()) | {"EdDSA"}

_MAX_TOKEN_CHARS = 16384  # far above any real token; bounds the work an anonymous caller can cause
_MAX_SUB_CHARS = 128
_MAX_NAME_CHARS = 64
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs"})  # control characters, and lone surrogates that cannot be encoded

JWKS_TIMEOUT = 5.0
JWKS_TTL = 600.0  # when the answer carries no Cache-Control max-age
JWKS_MIN_INTERVAL = 30.0  # least time between fetches once keys are cached, so junk kids cannot flood the IdP
JWKS_EMPTY_RETRY = 5.0  # least time between fetches while nothing is cached: every token fails until one works
JWKS_MAX_TTL = 86400.0
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


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


@dataclass(frozen=True)
class _Key:
    """One verification key and the algorithms it may verify."""

    material: bytes | PublicKey = field(repr=False)
    algorithms: frozenset[str]


def _algorithms_for(key: object) -> frozenset[str]:
    """The asymmetric algorithms a public key may verify; empty for anything else (private or symmetric keys)."""
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        name = _EC_ALGORITHMS.get(key.curve.name)
        return frozenset({name}) if name else frozenset()
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return frozenset({"EdDSA"})
    return frozenset()


def _load_pem(text: str) -> _Key:
    """Parse CHAT_JWT_PUBLIC_KEY: a PEM public key or certificate (``\\n`` escapes allowed, as env files need)."""
    data = text.replace("\\n", "\n").strip().encode()
    try:
        if data.startswith(b"-----BEGIN CERTIFICATE"):
            key: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise SettingsError("CHAT_JWT_PUBLIC_KEY", "not a PEM public key or certificate") from None
    algorithms = _algorithms_for(key)
    if not algorithms:
        raise SettingsError("CHAT_JWT_PUBLIC_KEY", "expected an RSA, EC (P-256/384/521) or Ed25519/Ed448 key")
    return _Key(cast(PublicKey, key), algorithms)  # a non-empty algorithm set means a public key


def _parse_jwks(document: Any) -> dict[str | None, list[_Key]]:
    """The usable signing keys of a JWK set, by kid. Raises ValueError when there is none."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("answer is not a JWK set")
    keys: dict[str | None, list[_Key]] = {}
    for raw in document["keys"]:
        if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
            continue
        try:
            jwk = jwt.PyJWK(raw)
        except (jwt.PyJWTError, TypeError, ValueError):
            continue  # a key type we cannot use must not spoil the rest of the set
        algorithms = _algorithms_for(jwk.key)
        if "alg" in raw:  # a key that names its algorithm is bound to it (RFC 7517 section 4.4)
            algorithms = algorithms & {raw["alg"]} if isinstance(raw["alg"], str) else frozenset()
        if algorithms:
            kid = jwk.key_id if isinstance(jwk.key_id, str) else None
            keys.setdefault(kid, []).append(_Key(jwk.key, algorithms))
    if not keys:
        raise ValueError("JWK set holds no usable signing key")
    return keys


def _cache_seconds(headers: Mapping[str, str]) -> float:
    """How long a JWKS answer may be cached: its max-age, kept between the refetch interval and a day."""
    found = _MAX_AGE.search(headers.get("Cache-Control", ""))
    if found is None:
        return JWKS_TTL
    return min(max(float(found.group(1)), JWKS_MIN_INTERVAL), JWKS_MAX_TTL)


class _JwksCache:
    """Keys published at a JWKS URL: fetched on first use, refetched on expiry or an unknown kid, rate-limited."""

    def __init__(self, url: str, clock: Callable[[], float]) -> None:
        self._url = url
        self._clock = clock  # monotonic seconds; injectable so tests can step past the intervals
        self._keys: dict[str | None, list[_Key]] | None = None  # None until a fetch succeeds
        self._expires = 0.0  # clock time after which the cached keys are stale (still used if a refetch fails)
        self._last_attempt: float | None = None  # clock time of the last fetch, successful or not
        self._lock = asyncio.Lock()  # one fetch at a time; waiters reuse its result
        self._session: aiohttp.ClientSession | None = None  # made on first fetch, inside the running loop

    async def keys_for(self, kid: str | None, alg: str) -> list[_Key]:
        """Keys that may verify a token with this ``kid`` (any kid when None) and ``alg``.

        Raises AuthError ``keys_unavailable`` (never fetched), ``unknown_key`` or ``bad_algorithm``.
        """
        # A caller that needs fresh keys waits for a fetch in flight rather than failing beside it.
        if self._wants_fetch(kid) and (self._lock.locked() or self._may_fetch()):
            async with self._lock:
                if self._wants_fetch(kid) and self._may_fetch():  # the fetch it waited for may have settled it
                    await self._fetch()
        if self._keys is None:
            raise AuthError("keys_unavailable", "signing keys cannot be fetched right now")
        published = self._keys.get(kid, []) if kid is not None else [k for ks in self._keys.values() for k in ks]
        if not published:
            raise AuthError("unknown_key", "token signed with an unknown key")
        usable = [key for key in published if alg in key.algorithms]
        if not usable:
            raise AuthError("bad_algorithm", f"algorithm {alg} does not match the signing key")
        return usable

    def _wants_fetch(self, kid: str | None) -> bool:
        """True when the cache is empty or stale, or lacks ``kid``."""
        if self._keys is None or self._clock() >= self._expires:
            return True
        return kid is not None and kid not in self._keys

    def _may_fetch(self) -> bool:
        """True when the last fetch began long enough ago for the rate limit."""
        if self._last_attempt is None:
            return True
        gap = JWKS_MIN_INTERVAL if self._keys is not None else JWKS_EMPTY_RETRY
        return self._clock() - self._last_attempt >= gap

    async def _fetch(self) -> None:
        """Replace the cached keys with the URL's current set; on failure keep what is cached and log."""
        previous, self._last_attempt = self._last_attempt, self._clock()
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=JWKS_TIMEOUT))
        try:
            async with self._session.get(self._url) as response:
                response.raise_for_status()
                keys = _parse_jwks(json.loads(await response.read()))
                lifetime = _cache_seconds(response.headers)
        except asyncio.CancelledError:
            self._last_attempt = previous  # the caller went away; do not make the next one wait out the interval
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as exc:
            stale = "keeping the cached keys" if self._keys is not None else "no keys cached"
            log.warning("JWKS fetch failed (%s: %s); %s", type(exc).__name__, exc, stale)
            return
        self._keys = keys
        self._expires = self._last_attempt + lifetime
        log.info("JWKS fetched: %d keys, cached for %.0f s", sum(map(len, keys.values())), lifetime)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class TokenVerifier:
    """Verifies bearer tokens against every configured key source. Call ``close()`` at shutdown."""

    def __init__(
        self, settings: Settings, *, secret: str | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``secret`` replaces ``settings.jwt_secret`` (the single-process mode's ephemeral key).

        Raises SettingsError when the public key is unusable or no key source is configured.
        """
        self._settings = settings  # leeway, audience and issuer
        self._jws = jwt.PyJWS()  # signature checks only; claims are checked by _principal
        secret = settings.jwt_secret if secret is None else secret
        # The secret and the PEM key are local, so they are tried before anything is fetched.
        self._static: list[_Key] = []
        if secret:
            self._static.append(_Key(secret.encode(), _HMAC_ALGORITHMS))
        if settings.jwt_public_key:
            self._static.append(_load_pem(settings.jwt_public_key))
        self._jwks = _JwksCache(settings.jwks_url, clock) if settings.jwks_url else None
        accepted = {alg for key in self._static for alg in key.algorithms}
        if self._jwks is not None:
            accepted |= _ASYMMETRIC_ALGORITHMS
        if not accepted:
            raise SettingsError("CHAT_JWT_SECRET", "no key to verify tokens with (or set CHAT_JWT_PUBLIC_KEY / JWKS)")
        self._accepted = frozenset(accepted)  # every algorithm some configured key may verify

    async def verify(self, token: str | None, *, now: float | None = None) -> Principal:
        """The caller named by ``token`` at unix time ``now`` (default: the current time).

        Raises AuthError; its ``reason`` says why and its ``message`` may be shown to the client.
        """
        if not token:
            raise AuthError("missing", "a token is required")
        if len(token) > _MAX_TOKEN_CHARS:
            raise AuthError("malformed", "token too long")
        alg, kid = self._read_header(token)
        if alg not in self._accepted:
            raise AuthError("bad_algorithm", f"algorithm {alg[:16]!r} is not accepted")
        payload = self._check_signature(token, alg, [key for key in self._static if alg in key.algorithms])
        if payload is None and self._jwks is not None and alg in _ASYMMETRIC_ALGORITHMS:
            payload = self._check_signature(token, alg, await self._jwks.keys_for(kid, alg))
        if payload is None:
            raise AuthError("bad_signature", "token signature is not valid")
        return _principal(_claims(payload), time.time() if now is None else now, self._settings)

    def _read_header(self, token: str) -> tuple[str, str | None]:
        try:
            header = self._jws.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed", "token is not a JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise AuthError("bad_algorithm", "token names no algorithm")
        return alg, header.get("kid")  # PyJWT has checked that a kid is a string

    def _check_signature(self, token: str, alg: str, keys: Sequence[_Key]) -> bytes | None:
        """The payload bytes if some key verifies the signature, else None."""
        for key in keys:
            try:
                payload: bytes = self._jws.decode_complete(token, key.material, algorithms=[alg])["payload"]
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError):
                continue  # not signed by this key; another source may still accept it
            except jwt.InvalidAlgorithmError:
                raise AuthError("bad_algorithm", f"algorithm {alg} is not accepted") from None
            except jwt.PyJWTError:
                raise AuthError("malformed", "token is not a valid JWS") from None
            return payload
        return None

    async def close(self) -> None:
        """Release the JWKS HTTP session."""
        if self._jwks is not None:
            await self._jwks.close()


def _claims(payload: bytes) -> dict[str, Any]:
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError):
        raise AuthError("malformed", "token payload is not JSON") from None
    if not isinstance(claims, dict):
        raise AuthError("malformed", "token payload is not a JSON object")
    return claims


def _principal(claims: dict[str, Any], now: float, settings: Settings) -> Principal:
    """Check the claims of a token whose signature is valid and build its principal."""
    user = _subject(claims)
    exp = _timestamp(claims, "exp")
    if exp is None:
        raise AuthError("missing_claim", "token has no exp claim")
    if now >= exp + settings.jwt_leeway:
        raise AuthError("expired", "token expired")
    nbf = _timestamp(claims, "nbf")
    if nbf is not None and now < nbf - settings.jwt_leeway:
        raise AuthError("bad_claim", "token is not valid yet")
    if settings.jwt_audience is not None:
        aud = claims.get("aud")
        if settings.jwt_audience not in (aud if isinstance(aud, list) else [aud]):
            raise AuthError("audience", "token is meant for another audience")
    if settings.jwt_issuer is not None and claims.get("iss") != settings.jwt_issuer:
        raise AuthError("issuer", "token comes from another issuer")
    return Principal(user=user, name=_name(claims), roles=_roles(claims), exp=exp, issued=_timestamp(claims, "iat"))


def _is_unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def _subject(claims: dict[str, Any]) -> str:
    sub = claims.get("sub")
    if sub is None:
        raise AuthError("missing_claim", "token has no sub claim")
    if not isinstance(sub, str) or not sub or len(sub) > _MAX_SUB_CHARS or any(map(_is_unsafe, sub)):
        raise AuthError("bad_claim", f"sub must be a string of 1-{_MAX_SUB_CHARS} printable characters")
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
    cleaned = "".join(char for char in name if not _is_unsafe(char)).strip()[:_MAX_NAME_CHARS]
    return cleaned or None


def _roles(claims: dict[str, Any]) -> frozenset[str]:
    roles = claims.get("roles")
    if roles is None:
        return frozenset()
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise AuthError("bad_claim", "roles must be a list of strings")
    return frozenset(roles)


def token_from_request(query_token: str | None, authorization: str | None) -> str | None:
    """The token of a request: ``Authorization: Bearer <jwt>`` if present, else ``?token=``, else None."""
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return query_token or None


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
