"""Who is calling: bearer-token (JWT) verification for the handshake, refreshes and the HTTP API.

``TokenVerifier.verify(token)`` turns a token into a :class:`Principal` or raises
:class:`AuthError`, whose ``reason`` is a short stable label that is safe as a metric label.

The parts live beside this module: :mod:`gateway.principal` (the result and the error, plain
data), :mod:`gateway.signing_keys` (which key may verify which algorithm),
:mod:`gateway.jwks` (keys fetched from an identity provider), :mod:`gateway.claims` (the checks
of a signed payload) and :mod:`gateway.mint` (tokens for the ephemeral and dev logins).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jwt

from gateway.claims import claims_of, principal_from
from gateway.jwks import JwksCache
from gateway.principal import AuthError, Principal
from gateway.signing_keys import ASYMMETRIC_ALGORITHMS, SigningKey, hmac_key, load_pem, register_prepared_hmac
from gateway.token_cache import VerifiedTokens
from shared.settings import Settings, SettingsError

_MAX_TOKEN_CHARS = 16384  # far above any real token; bounds the work an anonymous caller can cause
CACHE_CAPACITY = 100_000  # verified tokens remembered (a 16-byte digest and a principal each)


class TokenVerifier:
    """Verifies bearer tokens against every configured key source. Call ``close()`` at shutdown."""

    def __init__(
        self, settings: Settings, *, secret: str | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``secret`` replaces ``settings.jwt_secret`` (the single-process mode's ephemeral key).

        Raises SettingsError when the public key is unusable or no key source is configured.
        """
        self._settings = settings  # leeway, audience and issuer
        self._jws = jwt.PyJWS()  # signature checks only; claims are checked by gateway.claims
        register_prepared_hmac(self._jws)
        secret = settings.jwt_secret if secret is None else secret
        # The secret and the PEM key are local, so they are tried before anything is fetched.
        self._static: list[SigningKey] = []
        if secret:
            self._static.append(hmac_key(secret))
        if settings.jwt_public_key:
            self._static.append(load_pem(settings.jwt_public_key))
        self._jwks = JwksCache(settings.jwks_url, clock) if settings.jwks_url else None
        accepted = {alg for key in self._static for alg in key.algorithms}
        if self._jwks is not None:
            accepted |= ASYMMETRIC_ALGORITHMS
        if not accepted:
            raise SettingsError("CHAT_JWT_SECRET", "no key to verify tokens with (or set CHAT_JWT_PUBLIC_KEY / JWKS)")
        self._accepted = frozenset(accepted)  # every algorithm some configured key may verify
        self._verified = VerifiedTokens(CACHE_CAPACITY, settings.jwt_leeway)

    async def verify(self, token: str | None, *, now: float | None = None) -> Principal:
        """The caller named by ``token`` at unix time ``now`` (default: the current time).

        Raises AuthError; its ``reason`` says why and its ``message`` may be shown to the client.
        """
        if not token:
            raise AuthError("missing", "a token is required")
        if len(token) > _MAX_TOKEN_CHARS:
            raise AuthError("malformed", "token too long")
        now = time.time() if now is None else now
        digest = self._verified.digest(token)
        known = self._verified.get(digest, now)
        if known is not None:
            return known
        principal, static_key = await self._verify_signed(token, now)
        if static_key:
            # keys fetched from an identity provider may be withdrawn at any time: only tokens
            # signed with the configured secret or PEM key are remembered
            self._verified.put(digest, principal, now)
        return principal

    async def _verify_signed(self, token: str, now: float) -> tuple[Principal, bool]:
        """The principal, and whether a static key (not one from the JWKS) verified the token."""
        alg, kid = self._read_header(token)
        if alg not in self._accepted:
            raise AuthError("bad_algorithm", f"algorithm {alg[:16]!r} is not accepted")
        payload = self._check_signature(token, alg, [key for key in self._static if alg in key.algorithms])
        static_key = payload is not None
        if payload is None and self._jwks is not None and alg in ASYMMETRIC_ALGORITHMS:
            payload = self._check_signature(token, alg, await self._jwks.keys_for(kid, alg))
        if payload is None:
            raise AuthError("bad_signature", "token signature is not valid")
        settings = self._settings
        principal = principal_from(
            claims_of(payload),
            now,
            leeway=settings.jwt_leeway,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
        return principal, static_key

    def _read_header(self, token: str) -> tuple[str, str | None]:
        try:
            header = self._jws.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed", "token is not a JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise AuthError("bad_algorithm", "token names no algorithm")
        return alg, header.get("kid")  # PyJWT has checked that a kid is a string

    def _check_signature(self, token: str, alg: str, keys: Sequence[SigningKey]) -> bytes | None:
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


def token_from_request(query_token: str | None, authorization: str | None) -> str | None:
    """The token of a request: ``Authorization: Bearer <jwt>`` if present, else ``?token=``, else None."""
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return query_token or None
