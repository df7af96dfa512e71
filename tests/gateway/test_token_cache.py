"""Verified tokens are remembered for a reconnect storm, never past their expiry or a revocation."""

from __future__ import annotations

import pytest

from gateway.auth import TokenVerifier
from gateway.principal import AuthError, Principal
from gateway.token_cache import MAX_AGE, VerifiedTokens
from shared.settings import Settings
from tests.conftest import make_token
from tests.nodes import Cluster
from tests.procs import TEST_SECRET

NOW = 1_700_000_000.0


def principal(exp: float) -> Principal:
    return Principal(user="alice", name=None, roles=frozenset(), exp=exp)


def test_an_entry_is_dropped_at_expiry_and_after_max_age() -> None:
    cache = VerifiedTokens(capacity=10, leeway=5)
    key = cache.digest("token")
    cache.put(key, principal(NOW + 60), NOW)
    assert cache.get(key, NOW + 64) == principal(NOW + 60)
    with pytest.raises(AuthError) as expired:
        cache.get(key, NOW + 65)
    assert expired.value.reason == "expired"
    assert cache.get(key, NOW + 66) is None  # gone: verified from scratch next time
    long_lived = principal(NOW + 10 * MAX_AGE)
    cache.put(key, long_lived, NOW)
    assert cache.get(key, NOW + MAX_AGE - 1) == long_lived
    assert cache.get(key, NOW + MAX_AGE) is None


def test_the_least_recently_used_entry_goes_first() -> None:
    cache = VerifiedTokens(capacity=2, leeway=0)
    a, b, c = (cache.digest(t) for t in "abc")
    for key in (a, b):
        cache.put(key, principal(NOW + 60), NOW)
    cache.get(a, NOW)
    cache.put(c, principal(NOW + 60), NOW)
    assert len(cache) == 2
    assert cache.get(b, NOW) is None
    assert cache.get(a, NOW) is not None


async def test_the_verifier_checks_a_signature_once_and_an_expired_token_never_passes() -> None:
    verifier = TokenVerifier(Settings(jwt_secret=TEST_SECRET, jwt_leeway=0))
    checked: list[str] = []
    verify_signed = verifier._verify_signed

    async def counting(token: str, now: float) -> tuple[Principal, bool]:
        checked.append(token)
        return await verify_signed(token, now)

    verifier._verify_signed = counting  # type: ignore[method-assign]
    token = make_token("alice", exp=int(NOW) + 60)
    for _ in range(3):
        assert (await verifier.verify(token, now=NOW)).user == "alice"
    assert checked == [token]
    with pytest.raises(AuthError) as expired:
        await verifier.verify(token, now=NOW + 60)
    assert expired.value.reason == "expired"
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    with pytest.raises(AuthError) as bad:
        await verifier.verify(forged, now=NOW)
    assert bad.value.reason == "bad_signature"  # a token that merely looks like a cached one is checked


async def test_a_revoked_users_cached_token_is_refused_on_the_node_that_cached_it(cluster: Cluster) -> None:
    url = await cluster.node()
    token = make_token("mallory", iat=1)
    first = await cluster.connect(url, "mallory", iat=1)  # the node now holds the verified token
    status, _ = await cluster.api("POST", f"{url}/api/admin/revoke/mallory", "root", roles=["admin"])
    assert status == 204
    assert await first.close_frame() == 4001
    async with cluster.session.get(f"{url}/ws?token={token}") as response:
        assert response.status == 401
        assert "revoked" in (await response.json())["message"]
