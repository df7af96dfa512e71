"""Keys published by an identity provider at a JWKS URL, cached and refetched with a rate limit.

An unknown ``kid`` triggers a refetch (keys rotate), but at most once per ``JWKS_MIN_INTERVAL``,
so tokens with made-up kids cannot make this gateway flood the provider.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Mapping

import aiohttp

from gateway.principal import AuthError
from gateway.signing_keys import SigningKey, parse_jwks

log = logging.getLogger(__name__)

JWKS_TIMEOUT = 5.0
JWKS_TTL = 600.0  # when the answer carries no Cache-Control max-age
JWKS_MIN_INTERVAL = 30.0  # least time between fetches once keys are cached, so junk kids cannot flood the IdP
JWKS_EMPTY_RETRY = 5.0  # least time between fetches while nothing is cached: every token fails until one works
JWKS_MAX_TTL = 86400.0
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


def cache_seconds(headers: Mapping[str, str]) -> float:
    """How long a JWKS answer may be cached: its max-age, kept between the refetch interval and a day."""
    found = _MAX_AGE.search(headers.get("Cache-Control", ""))
    if found is None:
        return JWKS_TTL
    return min(max(float(found.group(1)), JWKS_MIN_INTERVAL), JWKS_MAX_TTL)


class JwksCache:
    """Keys published at a JWKS URL: fetched on first use, refetched on expiry or an unknown kid, rate-limited."""

    def __init__(self, url: str, clock: Callable[[], float]) -> None:
        self._url = url
        self._clock = clock  # monotonic seconds; injectable so tests can step past the intervals
        self._keys: dict[str | None, list[SigningKey]] | None = None  # None until a fetch succeeds
        self._expires = 0.0  # clock time after which the cached keys are stale (still used if a refetch fails)
        self._last_attempt: float | None = None  # clock time of the last fetch, successful or not
        self._lock = asyncio.Lock()  # one fetch at a time; waiters reuse its result
        self._session: aiohttp.ClientSession | None = None  # made on first fetch, inside the running loop

    async def keys_for(self, kid: str | None, alg: str) -> list[SigningKey]:
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
                keys = parse_jwks(json.loads(await response.read()))
                lifetime = cache_seconds(response.headers)
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
