"""Fixtures shared by every test: a private Redis per session, tokens, settings."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import jwt
import pytest
import redis

from tests.procs import TEST_SECRET, RedisServer

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole run, on a free port; tests isolate themselves by key prefix."""
    server = RedisServer()
    yield server
    server.terminate()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses, so tests share one Redis without flushing it."""
    return f"t{next(_prefixes)}x{int(time.time() * 1000) % 100000}"


@pytest.fixture
def sync_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_server.port)
    yield client
    client.close()


def make_token(sub: str = "alice", *, secret: str = TEST_SECRET, ttl: float = 3600, **claims) -> str:
    """An HS256 token for ``sub`` valid for ``ttl`` seconds."""
    payload = {"sub": sub, "exp": int(time.time() + ttl), **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


@pytest.fixture
def token():
    return make_token
