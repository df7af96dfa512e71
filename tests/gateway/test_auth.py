"""Token verification: HS256 secrets, PEM keys, a live JWKS endpoint, and every rejection reason."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, RSAAlgorithm

from gateway.auth import TokenVerifier, token_from_request
from gateway.jwks import JWKS_EMPTY_RETRY, JWKS_MIN_INTERVAL, JWKS_TTL
from gateway.mint import mint_token
from gateway.principal import AUTH_REASONS, AuthError, Principal
from gateway.signing_keys import PreparedHmac
from shared.settings import Settings, SettingsError
from tests.procs import TEST_SECRET, free_port, scaled

NOW = 1_700_000_000.0
OTHER_SECRET = "another-secret-that-is-long-enough-9876543210"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class JwksEndpoint:
    """What the local JWKS server answers, and how often it was asked."""

    document: dict[str, Any]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0
    url: str = ""
    requested: asyncio.Event = field(default_factory=asyncio.Event)  # set on every request
    release: asyncio.Event | None = None  # when set, answers wait for this event


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def rsa_key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem(private_key: Any) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def jwk(private_key: Any, kid: str | None, **extra: Any) -> dict[str, Any]:
    """The public JWK of ``private_key`` as an IdP would publish it."""
    algorithm = RSAAlgorithm if isinstance(private_key, rsa.RSAPrivateKey) else ECAlgorithm
    data = algorithm.to_jwk(private_key.public_key(), as_dict=True)
    if kid is not None:
        data["kid"] = kid
    return {**data, **extra}


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "alice", "exp": NOW + 3600}
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def hs(secret: str = TEST_SECRET, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), secret, algorithm="HS256")


def signed(private_key: Any, algorithm: str, kid: str | None = None, **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**overrides), private_key, algorithm=algorithm, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_token(header: dict[str, Any], payload: dict[str, Any], key: bytes | None = None) -> str:
    """A compact JWS built without PyJWT: HMAC-SHA256 with ``key``, or an empty signature."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key is not None else b""
    return f"{signing_input}.{b64(signature)}"


@pytest.fixture
async def verifiers():
    """Builds verifiers from Settings keyword arguments and closes them after the test."""
    made: list[TokenVerifier] = []

    def make(*, secret: str | None = None, clock: Clock | None = None, **settings: Any) -> TokenVerifier:
        extra = {"clock": clock} if clock is not None else {}
        verifier = TokenVerifier(Settings(**settings), secret=secret, **extra)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.close()


@pytest.fixture
def hs_verifier(verifiers) -> TokenVerifier:
    return verifiers(jwt_secret=TEST_SECRET)


@pytest.fixture
async def jwks(aiohttp_server, rsa_key) -> JwksEndpoint:
    """A real JWKS endpoint on loopback serving key ``a`` until the test changes it."""
    endpoint = JwksEndpoint(document={"keys": [jwk(rsa_key, "a")]})

    async def serve(request: web.Request) -> web.Response:
        endpoint.hits += 1
        endpoint.requested.set()
        if endpoint.release is not None:
            await endpoint.release.wait()
        if endpoint.status != 200:
            return web.Response(status=endpoint.status, text="unavailable")
        return web.json_response(endpoint.document, headers=endpoint.headers)

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", serve)
    server = await aiohttp_server(app)
    endpoint.url = str(server.make_url("/.well-known/jwks.json"))
    return endpoint


async def reason(verifier: TokenVerifier, token: str | None, now: float = NOW) -> str:
    with pytest.raises(AuthError) as info:
        await verifier.verify(token, now=now)
    assert info.value.reason in AUTH_REASONS
    assert info.value.message == str(info.value)
    return info.value.reason


# --- HS256 -----------------------------------------------------------------------------------------


async def test_valid_hs256_token_gives_principal(hs_verifier):
    """A valid HS256 token yields its user, name, roles and expiry."""
    token = hs(name="Alice", roles=["admin", "ops"])
    principal = await hs_verifier.verify(token, now=NOW)
    assert principal == Principal(user="alice", name="Alice", roles=frozenset({"admin", "ops"}), exp=NOW + 3600)
    assert principal.is_admin


async def test_principal_without_optional_claims(hs_verifier):
    """A token with only sub and exp has no name, no roles and no admin rights."""
    principal = await hs_verifier.verify(hs(), now=NOW)
    assert (principal.name, principal.roles, principal.is_admin) == (None, frozenset(), False)


async def test_verify_defaults_to_current_time(hs_verifier):
    """Without ``now`` the current time is used, so a freshly minted token passes."""
    principal = await hs_verifier.verify(mint_token(TEST_SECRET, "bob"))
    assert principal.user == "bob"


async def test_expired_token_rejected(hs_verifier):
    """A token past exp plus the leeway is rejected as expired."""
    assert await reason(hs_verifier, hs(exp=NOW - 60)) == "expired"


async def test_expiry_within_leeway_accepted(verifiers):
    """A token expired less than the leeway ago still passes; at the leeway it does not."""
    verifier = verifiers(jwt_secret=TEST_SECRET, jwt_leeway=10)
    token = hs(exp=NOW)
    assert (await verifier.verify(token, now=NOW + 9.5)).user == "alice"
    assert await reason(verifier, token, now=NOW + 10) == "expired"


async def test_zero_leeway_expires_at_exp(verifiers):
    """With no leeway a token is expired from the second of its exp."""
    verifier = verifiers(jwt_secret=TEST_SECRET, jwt_leeway=0)
    assert (await verifier.verify(hs(exp=NOW), now=NOW - 0.5)).user == "alice"
    assert await reason(verifier, hs(exp=NOW), now=NOW) == "expired"


async def test_not_before_in_future_rejected(hs_verifier):
    """A token whose nbf lies beyond the leeway is not accepted yet."""
    assert await reason(hs_verifier, hs(nbf=NOW + 600)) == "bad_claim"
    assert (await hs_verifier.verify(hs(nbf=NOW + 5), now=NOW)).user == "alice"


async def test_wrong_secret_rejected(hs_verifier):
    """A token signed with another secret fails the signature check."""
    assert await reason(hs_verifier, hs(secret=OTHER_SECRET)) == "bad_signature"


async def test_tampered_payload_rejected(hs_verifier):
    """Changing the payload of a signed token breaks its signature."""
    header, _, signature = hs().split(".")
    forged = b64(json.dumps(claims(roles=["admin"])).encode())
    assert await reason(hs_verifier, f"{header}.{forged}.{signature}") == "bad_signature"


async def test_explicit_secret_overrides_settings(verifiers):
    """A secret passed to the verifier replaces the configured one."""
    verifier = verifiers(jwt_secret=TEST_SECRET, secret=OTHER_SECRET)
    assert (await verifier.verify(hs(secret=OTHER_SECRET), now=NOW)).user == "alice"
    assert await reason(verifier, hs()) == "bad_signature"


async def test_hs512_accepted_with_secret(verifiers):
    """Every HMAC algorithm is accepted when a secret is configured."""
    verifier = verifiers(jwt_secret="s" * 64)
    token = jwt.encode(claims(), "s" * 64, algorithm="HS512")
    assert (await verifier.verify(token, now=NOW)).user == "alice"


# --- algorithms ------------------------------------------------------------------------------------


async def test_alg_none_rejected(hs_verifier):
    """An unsigned token (alg none, empty signature) is rejected by algorithm."""
    token = hand_token({"alg": "none", "typ": "JWT"}, claims())
    assert token.endswith(".")
    assert await reason(hs_verifier, token) == "bad_algorithm"


@pytest.mark.parametrize("alg", ["None", "NONE", "", None, ["HS256"], 256])
async def test_odd_alg_values_rejected(hs_verifier, alg):
    """Spellings of none, a missing alg and non-string algs are rejected by algorithm."""
    assert await reason(hs_verifier, hand_token({"alg": alg}, claims(), TEST_SECRET.encode())) == "bad_algorithm"


async def test_hs_rs_confusion_rejected(verifiers, rsa_key):
    """An HS256 token keyed with the RSA public key's PEM is refused when only that key is configured."""
    public_pem = pem(rsa_key)
    verifier = verifiers(jwt_public_key=public_pem)
    token = hand_token({"alg": "HS256", "typ": "JWT"}, claims(), public_pem.encode())
    assert await reason(verifier, token) == "bad_algorithm"


async def test_hs_rs_confusion_with_secret_also_configured(verifiers, rsa_key):
    """With a secret and a PEM key, an HS256 token keyed with the PEM is checked against the secret only."""
    public_pem = pem(rsa_key)
    verifier = verifiers(jwt_secret=TEST_SECRET, jwt_public_key=public_pem)
    token = hand_token({"alg": "HS256", "typ": "JWT"}, claims(), public_pem.encode())
    assert await reason(verifier, token) == "bad_signature"


async def test_rs256_refused_with_secret_only(hs_verifier, rsa_key):
    """An RSA-signed token is refused by algorithm when only a secret is configured."""
    assert await reason(hs_verifier, signed(rsa_key, "RS256")) == "bad_algorithm"


# --- malformed input -------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, ""])
async def test_missing_token(hs_verifier, token):
    """No token at all is reported as missing."""
    assert await reason(hs_verifier, token) == "missing"


@pytest.mark.parametrize("token", ["abc", "a.b", "a.b.c", "!!!.@@@.###", "e30.e30", "x" * 20000])
async def test_malformed_token(hs_verifier, token):
    """Strings that are not compact JWS tokens are reported as malformed."""
    assert await reason(hs_verifier, token) == "malformed"


async def test_payload_not_an_object(hs_verifier):
    """A validly signed payload that is not a JSON object is malformed."""
    token = jwt.api_jws.encode(b"[1, 2]", TEST_SECRET, algorithm="HS256")
    assert await reason(hs_verifier, token) == "malformed"


# --- claims ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"sub": None}, "missing_claim"),
        ({"sub": ""}, "bad_claim"),
        ({"sub": 42}, "bad_claim"),
        ({"sub": ["alice"]}, "bad_claim"),
        ({"sub": "a" * 129}, "bad_claim"),
        ({"sub": "ali\nce"}, "bad_claim"),
        ({"sub": "ali\x00ce"}, "bad_claim"),
        ({"exp": None}, "missing_claim"),
        ({"exp": "tomorrow"}, "bad_claim"),
        ({"exp": True}, "bad_claim"),
        ({"exp": 10**400}, "bad_claim"),
        ({"roles": "admin"}, "bad_claim"),
        ({"roles": ["admin", 1]}, "bad_claim"),
        ({"roles": {"admin": True}}, "bad_claim"),
        ({"name": 7}, "bad_claim"),
    ],
)
async def test_bad_claims_rejected(hs_verifier, overrides, expected):
    """Missing or ill-typed sub, exp, roles and name are rejected with a claim reason."""
    assert await reason(hs_verifier, hs(**overrides)) == expected


async def test_infinite_exp_rejected(hs_verifier):
    """An exp of Infinity (valid Python JSON, never expiring) is rejected."""
    token = hand_token({"alg": "HS256"}, {"sub": "alice", "exp": float("inf")}, TEST_SECRET.encode())
    assert '"exp": Infinity' in base64.urlsafe_b64decode(token.split(".")[1] + "==").decode()
    assert await reason(hs_verifier, token) == "bad_claim"


async def test_longest_sub_accepted(hs_verifier):
    """A sub of exactly 128 characters, non-ASCII included, passes."""
    sub = "é" * 128
    assert (await hs_verifier.verify(hs(sub=sub), now=NOW)).user == sub


async def test_name_cleaned_and_truncated(hs_verifier):
    """The name loses control characters and is cut to 64 characters."""
    principal = await hs_verifier.verify(hs(name="Bob\x07 " + "x" * 100), now=NOW)
    assert principal.name == "Bob " + "x" * 60


async def test_audience_checked_when_configured(verifiers):
    """With an audience set, aud must be it or a list holding it."""
    verifier = verifiers(jwt_secret=TEST_SECRET, jwt_audience="chat")
    assert (await verifier.verify(hs(aud="chat"), now=NOW)).user == "alice"
    assert (await verifier.verify(hs(aud=["other", "chat"]), now=NOW)).user == "alice"
    assert await reason(verifier, hs(aud="other")) == "audience"
    assert await reason(verifier, hs(aud=["other"])) == "audience"
    assert await reason(verifier, hs()) == "audience"


async def test_audience_ignored_when_not_configured(hs_verifier):
    """Without a configured audience any aud claim is accepted."""
    assert (await hs_verifier.verify(hs(aud="anything"), now=NOW)).user == "alice"


async def test_issuer_checked_when_configured(verifiers, hs_verifier):
    """With an issuer set, iss must equal it; without one, iss is not looked at."""
    verifier = verifiers(jwt_secret=TEST_SECRET, jwt_issuer="https://idp.test/")
    assert (await verifier.verify(hs(iss="https://idp.test/"), now=NOW)).user == "alice"
    assert await reason(verifier, hs(iss="https://evil.test/")) == "issuer"
    assert await reason(verifier, hs()) == "issuer"
    assert (await hs_verifier.verify(hs(iss="https://evil.test/"), now=NOW)).user == "alice"


# --- PEM keys --------------------------------------------------------------------------------------


async def test_rs256_with_pem(verifiers, rsa_key, rsa_key2):
    """An RS256 token verifies against the configured RSA public key, and not against another one."""
    verifier = verifiers(jwt_public_key=pem(rsa_key))
    assert (await verifier.verify(signed(rsa_key, "RS256", roles=["admin"]), now=NOW)).is_admin
    assert (await verifier.verify(signed(rsa_key, "PS256"), now=NOW)).user == "alice"
    assert await reason(verifier, signed(rsa_key2, "RS256")) == "bad_signature"


async def test_es256_with_pem(verifiers, ec_key, rsa_key):
    """An ES256 token verifies against a P-256 key; an RSA token does not match that key's algorithm."""
    verifier = verifiers(jwt_public_key=pem(ec_key))
    assert (await verifier.verify(signed(ec_key, "ES256"), now=NOW)).user == "alice"
    assert await reason(verifier, signed(rsa_key, "RS256")) == "bad_algorithm"


async def test_pem_with_escaped_newlines(verifiers, ec_key):
    """A PEM written on one line with literal backslash-n escapes is accepted."""
    verifier = verifiers(jwt_public_key=pem(ec_key).replace("\n", "\\n"))
    assert (await verifier.verify(signed(ec_key, "ES256"), now=NOW)).user == "alice"


async def test_certificate_pem_accepted(verifiers, rsa_key):
    """A PEM certificate stands for its public key."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.test")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(rsa_key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
        .sign(rsa_key, hashes.SHA256())
    )
    verifier = verifiers(jwt_public_key=certificate.public_bytes(serialization.Encoding.PEM).decode())
    assert (await verifier.verify(signed(rsa_key, "RS256"), now=NOW)).user == "alice"


def test_unusable_public_key_is_a_settings_error(rsa_key):
    """A public key that is not PEM, or a private key, stops startup naming the setting."""
    private_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    for value in ("not a key", private_pem):
        with pytest.raises(SettingsError) as info:
            TokenVerifier(Settings(jwt_public_key=value))
        assert info.value.name == "CHAT_JWT_PUBLIC_KEY"


def test_no_key_source_is_a_settings_error():
    """A verifier with no secret, key or JWKS URL refuses to exist."""
    with pytest.raises(SettingsError):
        TokenVerifier(Settings())


# --- JWKS ------------------------------------------------------------------------------------------


async def test_jwks_token_verifies_and_keys_are_cached(verifiers, jwks, rsa_key):
    """A token whose kid is published verifies; later tokens reuse the cached set."""
    verifier = verifiers(jwks_url=jwks.url, clock=Clock())
    assert (await verifier.verify(signed(rsa_key, "RS256", kid="a"), now=NOW)).user == "alice"
    assert (await verifier.verify(signed(rsa_key, "RS256", kid="a", sub="bob"), now=NOW)).user == "bob"
    assert jwks.hits == 1


async def test_jwks_wrong_signature(verifiers, jwks, rsa_key2):
    """A token naming a published kid but signed by another key fails the signature check."""
    verifier = verifiers(jwks_url=jwks.url, clock=Clock())
    assert await reason(verifier, signed(rsa_key2, "RS256", kid="a")) == "bad_signature"


async def test_jwks_key_rotation_refetches(verifiers, jwks, rsa_key, rsa_key2):
    """A new kid after the refetch interval makes the verifier load the rotated set."""
    clock = Clock()
    verifier = verifiers(jwks_url=jwks.url, clock=clock)
    assert (await verifier.verify(signed(rsa_key, "RS256", kid="a"), now=NOW)).user == "alice"
    jwks.document = {"keys": [jwk(rsa_key2, "b")]}
    clock.now += JWKS_MIN_INTERVAL
    assert (await verifier.verify(signed(rsa_key2, "RS256", kid="b"), now=NOW)).user == "alice"
    assert jwks.hits == 2
    assert await reason(verifier, signed(rsa_key, "RS256", kid="a")) == "unknown_key"
    assert jwks.hits == 2


async def test_unknown_kid_refetches_at_most_every_interval(verifiers, jwks, rsa_key):
    """Tokens with unknown kids cause at most one fetch per refetch interval."""
    clock = Clock()
    verifier = verifiers(jwks_url=jwks.url, clock=clock)
    await verifier.verify(signed(rsa_key, "RS256", kid="a"), now=NOW)
    assert jwks.hits == 1
    for step in range(20):
        clock.now += 1
        assert await reason(verifier, signed(rsa_key, "RS256", kid=f"junk{step}")) == "unknown_key"
    assert jwks.hits == 1
    clock.now += JWKS_MIN_INTERVAL - 20
    assert await reason(verifier, signed(rsa_key, "RS256", kid="junk")) == "unknown_key"
    assert jwks.hits == 2
    assert await reason(verifier, signed(rsa_key, "RS256", kid="junk-again")) == "unknown_key"
    assert jwks.hits == 2


async def test_concurrent_verifies_share_one_fetch(verifiers, jwks, rsa_key, rsa_key2):
    """Many handshakes at once with a new kid cause a single fetch."""
    clock = Clock()
    verifier = verifiers(jwks_url=jwks.url, clock=clock)
    first = await asyncio.gather(*(verifier.verify(signed(rsa_key, "RS256", kid="a"), now=NOW) for _ in range(20)))
    assert len(first) == 20
    assert jwks.hits == 1
    jwks.document = {"keys": [jwk(rsa_key, "a"), jwk(rsa_key2, "b")]}
    clock.now += JWKS_MIN_INTERVAL
    token = signed(rsa_key2, "RS256", kid="b")
    principals = await asyncio.gather(*(verifier.verify(token, now=NOW) for _ in range(20)))
    assert {principal.user for principal in principals} == {"alice"}
    assert jwks.hits == 2


async def test_cancelled_fetch_does_not_block_the_next(verifiers, jwks, rsa_key):
    """A verify cancelled while fetching leaves the next verify free to fetch at once."""
    jwks.release = asyncio.Event()
    verifier = verifiers(jwks_url=jwks.url, clock=Clock())
    token = signed(rsa_key, "RS256", kid="a")
    pending = asyncio.create_task(verifier.verify(token, now=NOW))
    await asyncio.wait_for(jwks.requested.wait(), scaled(5))
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    jwks.release.set()
    assert (await verifier.verify(token, now=NOW)).user == "alice"
    assert jwks.hits == 2


async def test_jwks_down_without_cache(verifiers, rsa_key):
    """An unreachable JWKS endpoint with nothing cached rejects tokens as keys_unavailable."""
    verifier = verifiers(jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json", clock=Clock())
    assert await reason(verifier, signed(rsa_key, "RS256", kid="a")) == "keys_unavailable"


@pytest.mark.parametrize("document", [{"keys": []}, {"keys": [{"kty": "RSA"}]}, {"nokeys": 1}, "not json"], ids=str)
async def test_jwks_unusable_answer(verifiers, jwks, rsa_key, document):
    """An answer without a usable signing key counts as no keys."""
    jwks.document = document
    verifier = verifiers(jwks_url=jwks.url, clock=Clock())
    assert await reason(verifier, signed(rsa_key, "RS256", kid="a")) == "keys_unavailable"


async def test_jwks_error_status_then_recovery(verifiers, jwks, rsa_key):
    """A failing endpoint is retried after a short pause while nothing is cached, then keys load."""
    clock = Clock()
    jwks.status = 503
    verifier = verifiers(jwks_url=jwks.url, clock=clock)
    token = signed(rsa_key, "RS256", kid="a")
    assert await reason(verifier, token) == "keys_unavailable"
    jwks.status = 200
    assert await reason(verifier, token) == "keys_unavailable"
    assert jwks.hits == 1
    clock.now += JWKS_EMPTY_RETRY
    assert (await verifier.verify(token, now=NOW)).user == "alice"
    assert jwks.hits == 2


async def test_stale_keys_used_while_endpoint_fails(verifiers, jwks, rsa_key):
    """After the cache lifetime a failed refetch keeps the old keys in use."""
    clock = Clock()
    verifier = verifiers(jwks_url=jwks.url, clock=clock)
    token = signed(rsa_key, "RS256", kid="a")
    await verifier.verify(token, now=NOW)
    jwks.status = 500
    clock.now += JWKS_TTL - 1
    await verifier.verify(token, now=NOW)
    assert jwks.hits == 1
    clock.now += 1
    assert (await verifier.verify(token, now=NOW)).user == "alice"
    assert jwks.hits == 2


async def test_cache_control_max_age_sets_lifetime(verifiers, jwks, rsa_key):
    """The answer's Cache-Control max-age replaces the default cache lifetime."""
    jwks.headers = {"Cache-Control": "public, max-age=120, must-revalidate"}
    clock = Clock()
    verifier = verifiers(jwks_url=jwks.url, clock=clock)
    token = signed(rsa_key, "RS256", kid="a")
    await verifier.verify(token, now=NOW)
    clock.now += 119
    await verifier.verify(token, now=NOW)
    assert jwks.hits == 1
    clock.now += 1
    await verifier.verify(token, now=NOW)
    assert jwks.hits == 2


async def test_tiny_max_age_cannot_force_constant_fetching(verifiers, jwks, rsa_key):
    """A max-age of zero is raised to the refetch interval."""
    jwks.headers = {"Cache-Control": "max-age=0"}
    clock = Clock()
    verifier = verifiers(jwks_url=jwks.url, clock=clock)
    token = signed(rsa_key, "RS256", kid="a")
    for _ in range(5):
        await verifier.verify(token, now=NOW)
        clock.now += 1
    assert jwks.hits == 1


async def test_jwks_key_bound_to_its_alg(verifiers, jwks, rsa_key, ec_key):
    """A published key with an alg accepts only that algorithm; a key of another type never matches."""
    jwks.document = {"keys": [jwk(rsa_key, "a", alg="RS256", use="sig")]}
    verifier = verifiers(jwks_url=jwks.url, clock=Clock())
    assert (await verifier.verify(signed(rsa_key, "RS256", kid="a"), now=NOW)).user == "alice"
    assert await reason(verifier, signed(rsa_key, "RS384", kid="a")) == "bad_algorithm"
    assert await reason(verifier, signed(ec_key, "ES256", kid="a")) == "bad_algorithm"


async def test_jwks_without_alg_allows_key_family(verifiers, jwks, rsa_key, ec_key):
    """Published keys without an alg accept every algorithm of their key type."""
    jwks.document = {"keys": [jwk(rsa_key, "a"), jwk(ec_key, "e")]}
    verifier = verifiers(jwks_url=jwks.url, clock=Clock())
    assert (await verifier.verify(signed(rsa_key, "RS512", kid="a"), now=NOW)).user == "alice"
    assert (await verifier.verify(signed(ec_key, "ES256", kid="e"), now=NOW)).user == "alice"


async def test_jwks_skips_unusable_and_symmetric_keys(verifiers, jwks, rsa_key):
    """Encryption keys, unknown key types and published HMAC keys are ignored; signing keys still work."""
    jwks.document = {
        "keys": [
            jwk(rsa_key, "enc", use="enc"),
            {"kty": "XYZ", "kid": "odd"},
            {"kty": "oct", "kid": "sym", "k": b64(TEST_SECRET.encode())},
            "garbage",
            jwk(rsa_key, "a"),
        ]
    }
    verifier = verifiers(jwks_url=jwks.url, clock=Clock())
    assert (await verifier.verify(signed(rsa_key, "RS256", kid="a"), now=NOW)).user == "alice"
    assert await reason(verifier, signed(rsa_key, "RS256", kid="enc")) == "unknown_key"
    hmac_token = jwt.encode(claims(), TEST_SECRET, algorithm="HS256", headers={"kid": "sym"})
    assert await reason(verifier, hmac_token) == "bad_algorithm"


async def test_token_without_kid_tries_every_published_key(verifiers, jwks, rsa_key, rsa_key2):
    """A token without a kid is accepted if any published key of its type verifies it."""
    jwks.document = {"keys": [jwk(rsa_key, "a"), jwk(rsa_key2, None)]}
    verifier = verifiers(jwks_url=jwks.url, clock=Clock())
    assert (await verifier.verify(signed(rsa_key2, "RS256"), now=NOW)).user == "alice"
    assert (await verifier.verify(signed(rsa_key, "RS256"), now=NOW)).user == "alice"


async def test_every_key_source_accepted_together(verifiers, jwks, rsa_key, rsa_key2):
    """With secret, PEM and JWKS configured, tokens under each verify; the local keys need no fetch."""
    verifier = verifiers(jwt_secret=TEST_SECRET, jwt_public_key=pem(rsa_key2), jwks_url=jwks.url, clock=Clock())
    assert (await verifier.verify(hs(), now=NOW)).user == "alice"
    assert (await verifier.verify(signed(rsa_key2, "RS256"), now=NOW)).user == "alice"
    assert jwks.hits == 0
    assert (await verifier.verify(signed(rsa_key, "RS256", kid="a"), now=NOW)).user == "alice"
    assert jwks.hits == 1


async def test_claims_checked_for_jwks_tokens(verifiers, jwks, rsa_key):
    """Tokens verified through the JWKS go through the same claim checks."""
    verifier = verifiers(jwks_url=jwks.url, jwt_audience="chat", clock=Clock())
    assert await reason(verifier, signed(rsa_key, "RS256", kid="a", aud="other")) == "audience"
    assert await reason(verifier, signed(rsa_key, "RS256", kid="a", exp=NOW - 3600)) == "expired"


# --- request parsing and minting -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "authorization", "expected"),
    [
        (None, None, None),
        ("", "", None),
        ("q.q.q", None, "q.q.q"),
        (None, "Bearer h.h.h", "h.h.h"),
        (None, "bearer   h.h.h  ", "h.h.h"),
        ("q.q.q", "Bearer h.h.h", "h.h.h"),
        ("q.q.q", "Basic dXNlcjpwYXNz", "q.q.q"),
        (None, "Basic dXNlcjpwYXNz", None),
        (None, "Bearer", None),
        ("q.q.q", "Bearer ", "q.q.q"),
    ],
)
def test_token_from_request(query, authorization, expected):
    """The Bearer header wins over ?token=; other schemes and empty values count as absent."""
    assert token_from_request(query, authorization) == expected


async def test_mint_token_round_trip(hs_verifier):
    """A minted token verifies to the same user, name, roles and expiry."""
    token = mint_token(TEST_SECRET, "carol", ttl=120, name="Carol", roles=["admin"], now=NOW)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    principal = await hs_verifier.verify(token, now=NOW + 60)
    assert principal == Principal(user="carol", name="Carol", roles=frozenset({"admin"}), exp=NOW + 120, issued=NOW)
    assert await reason(hs_verifier, token, now=NOW + 120 + 10) == "expired"


def test_minted_token_minimal_claims():
    """Without name or roles a minted token carries only sub, iat and exp."""
    token = mint_token(TEST_SECRET, "dave", ttl=0.5, now=NOW)
    payload = jwt.decode(token, TEST_SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert payload == {"sub": "dave", "iat": int(NOW), "exp": int(NOW) + 1}


def test_hmac_secrets_are_prepared_once_and_key_text_is_still_refused() -> None:
    """The verifier's HMAC algorithm keeps pyjwt's refusal of PEM/SSH text as a secret."""
    algorithm = PreparedHmac(HMACAlgorithm.SHA256)
    assert algorithm.prepare_key("s3cret") is algorithm.prepare_key(b"s3cret")
    public_pem = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    for _ in range(2):  # refused every time: a refusal is never cached as a key
        with pytest.raises(jwt.InvalidKeyError):
            algorithm.prepare_key(public_pem)
