"""Redis URLs: every supported scheme parses without I/O; a URL that cannot work is refused first."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from shared.redis_url import RedisTarget, parse_redis_url
from shared.settings import Settings, SettingsError
from tests.procs import ROOT


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://:pw@127.0.0.1:6380/2",
        "rediss://user:pw@db.example:6380/0?socket_timeout=2.5&health_check_interval=30",
        "redis://[::1]:6379",
        "unix:///run/redis.sock",
        "unix:///run/redis.sock?db=3",
    ],
)
def test_single_server_urls_are_kept_as_given(url: str) -> None:
    """A single server's URL is accepted and kept whole: redis-py reads it, options included."""
    assert parse_redis_url(url) == RedisTarget("single", url)


def test_cluster_url_lists_seed_nodes_and_credentials() -> None:
    """A cluster URL gives every seed node, the credentials and TLS; the password stays out of repr."""
    target = parse_redis_url("rediss+cluster://app:s%40cret@10.0.0.1:7000,[::1]:7001,redis-2")
    assert target == RedisTarget(
        "cluster",
        target.url,
        (("10.0.0.1", 7000), ("::1", 7001), ("redis-2", 6379)),
        username="app",
        password="s@cret",
        tls=True,
    )
    assert "s@cret" not in repr(target)
    assert parse_redis_url("redis+cluster://h1:7000/0").nodes == (("h1", 7000),)


def test_sentinel_url_names_sentinels_master_and_database() -> None:
    """A sentinel URL gives the sentinels (default port 26379), the master's name, the database and the password."""
    target = parse_redis_url("redis+sentinel://:pw@127.0.0.1:26380,sentinel-2/main/2")
    assert target == RedisTarget(
        "sentinel", target.url, (("127.0.0.1", 26380), ("sentinel-2", 26379)), "main", 2, password="pw"
    )
    assert parse_redis_url("rediss+sentinel://s1/main").tls


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://localhost", "unsupported scheme 'http'"),
        ("localhost:6379", "unsupported scheme"),
        ("redis://localhost:notaport", "Port could not be cast"),
        ("redis://localhost:70000", "Port out of range"),
        ("redis://localhost:6379/abc", "database number"),
        ("redis://localhost?socket_timeout=soon", "socket_timeout must be a number"),
        ("redis://localhost?db=x", "db must be a number"),
        ("redis+cluster://h1:7000/3", "only database 0"),
        ("redis+cluster://h1:notaport", "bad port"),
        ("redis+cluster://h1:0", "bad port"),
        ("redis+cluster://", "no host"),
        ("redis+cluster://:7000", "no host"),
        ("redis+cluster://h1:7000?ssl_cert_reqs=none", "query options"),
        ("redis+sentinel://h1:26379", "master-name"),
        ("redis+sentinel://h1/main/x", "database must be a number"),
        ("redis+sentinel://h1/a/1/2", "master-name"),
    ],
)
def test_bad_url_raises_value_error_saying_what_is_wrong(url: str, problem: str) -> None:
    """A URL that cannot work raises ValueError whose message says what is wrong."""
    with pytest.raises(ValueError, match=problem):
        parse_redis_url(url)


@pytest.mark.parametrize(("source", "named"), [("env", "CHAT_REDIS_URL"), ("flag", "--redis-url")])
def test_settings_turn_a_bad_url_into_a_settings_error(source: str, named: str) -> None:
    """Settings refuse a bad Redis URL with a SettingsError naming the variable or flag, and the problem."""
    url = "redis+sentinel://h1:26379"
    argv, environ = (["--redis-url", url], {}) if source == "flag" else ([], {"CHAT_REDIS_URL": url})
    with pytest.raises(SettingsError, match=f"{named}: expected redis\\+sentinel://"):
        Settings.from_sources(argv, environ)


def test_the_parser_imports_only_the_standard_library() -> None:
    """shared/redis_url.py imports nothing but the standard library."""
    tree = ast.parse(Path(ROOT, "shared", "redis_url.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {name.partition(".")[0] for name in imported} <= {"__future__", "dataclasses", "urllib"}


def test_settings_load_without_the_broker_or_redis() -> None:
    """Importing the settings loads neither the broker nor redis-py: no import cycle through them."""
    code = (
        "import sys, shared.settings; print(sorted(m for m in sys.modules if m.startswith(('shared.broker', 'redis'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
