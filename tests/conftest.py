"""Fixtures shared by every test: a private Redis per session, tokens, settings."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from tests.nodes import Cluster
from tests.procs import RedisServer, make_token

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


@pytest.fixture
def token():
    return make_token


@pytest.fixture(params=["memory", "redis"])
async def cluster(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> AsyncIterator[Cluster]:
    """Gateway nodes in this process on the memory broker and on Redis: such tests run on both."""
    nodes = Cluster(request.param, redis_url, redis_prefix)
    yield nodes
    await nodes.close()
