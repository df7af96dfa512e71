"""Verification keys and the algorithms each may verify.

Which algorithms a token may use follows from the configured keys, never from the token: an
HMAC secret allows HS256/384/512, a PEM public key or a JWKS key allows only the asymmetric
algorithms of its own key type. ``alg: none`` and HS/RS confusion (an HS256 token "signed"
with the public key's PEM text) are therefore rejected before any signature is computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import HMACAlgorithm

from shared.settings import SettingsError

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
ASYMMETRIC_ALGORITHMS = _RSA_ALGORITHMS | frozenset(_EC_ALGORITHMS.values()) | {"EdDSA"}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


@dataclass(frozen=True)
class SigningKey:
    """One verification key and the algorithms it may verify."""

    material: bytes | PublicKey = field(repr=False)
    algorithms: frozenset[str]


class PreparedHmac(HMACAlgorithm):
    """pyjwt's HMAC algorithm with each secret prepared once.

    pyjwt prepares the key again for every token it verifies, scanning the secret for PEM, SSH
    and DER forms (which it refuses as HMAC secrets): about a tenth of a node's time in a
    reconnect storm. The secrets are the configured keys, so the cache holds one or two.
    """

    def __init__(self, hash_alg: Any) -> None:
        super().__init__(hash_alg)
        self._prepared: dict[bytes, bytes] = {}

    def prepare_key(self, key: str | bytes) -> bytes:
        raw = key.encode() if isinstance(key, str) else key
        prepared = self._prepared.get(raw)
        if prepared is None:
            prepared = self._prepared[raw] = super().prepare_key(raw)
        return prepared


def register_prepared_hmac(jws: jwt.PyJWS) -> None:
    """Make ``jws`` verify HS256/384/512 with :class:`PreparedHmac`."""
    for name, hash_alg in (
        ("HS256", HMACAlgorithm.SHA256),
        ("HS384", HMACAlgorithm.SHA384),
        ("HS512", HMACAlgorithm.SHA512),
    ):
        jws.unregister_algorithm(name)
        jws.register_algorithm(name, PreparedHmac(hash_alg))


def hmac_key(secret: str) -> SigningKey:
    """The key of a shared secret (CHAT_JWT_SECRET or the single-process mode's ephemeral one)."""
    return SigningKey(secret.encode(), HMAC_ALGORITHMS)


def algorithms_for(key: object) -> frozenset[str]:
    """The asymmetric algorithms a public key may verify; empty for anything else (private or symmetric keys)."""
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        name = _EC_ALGORITHMS.get(key.curve.name)
        return frozenset({name}) if name else frozenset()
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return frozenset({"EdDSA"})
    return frozenset()


def load_pem(text: str) -> SigningKey:
    """Parse CHAT_JWT_PUBLIC_KEY: a PEM public key or certificate (``\\n`` escapes allowed, as env files need).

    Raises SettingsError when it is neither, or is a key type no JWT algorithm uses.
    """
    data = text.replace("\\n", "\n").strip().encode()
    try:
        if data.startswith(b"-----BEGIN CERTIFICATE"):
            key: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise SettingsError("CHAT_JWT_PUBLIC_KEY", "not a PEM public key or certificate") from None
    algorithms = algorithms_for(key)
    if not algorithms:
        raise SettingsError("CHAT_JWT_PUBLIC_KEY", "expected an RSA, EC (P-256/384/521) or Ed25519/Ed448 key")
    return SigningKey(cast(PublicKey, key), algorithms)  # a non-empty algorithm set means a public key


def parse_jwks(document: Any) -> dict[str | None, list[SigningKey]]:
    """The usable signing keys of a JWK set, by kid. Raises ValueError when there is none."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("answer is not a JWK set")
    keys: dict[str | None, list[SigningKey]] = {}
    for raw in document["keys"]:
        if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
            continue
        try:
            jwk = jwt.PyJWK(raw)
        except (jwt.PyJWTError, TypeError, ValueError):
            continue  # a key type we cannot use must not spoil the rest of the set
        algorithms = algorithms_for(jwk.key)
        if "alg" in raw:  # a key that names its algorithm is bound to it (RFC 7517 section 4.4)
            algorithms = algorithms & {raw["alg"]} if isinstance(raw["alg"], str) else frozenset()
        if algorithms:
            kid = jwk.key_id if isinstance(jwk.key_id, str) else None
            keys.setdefault(kid, []).append(SigningKey(jwk.key, algorithms))
    if not keys:
        raise ValueError("JWK set holds no usable signing key")
    return keys
