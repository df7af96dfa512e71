"""Settings: flags win over environment, bad values exit 2 naming the setting, --help lists all."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.settings import Settings, SettingsError
from tests.procs import ROOT, TEST_SECRET


def run(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env or {}, cwd=ROOT, timeout=60
    )


def test_flags_win_over_environment() -> None:
    """A flag overrides the environment variable of the same setting."""
    settings = Settings.from_sources(["--port", "5001"], {"CHAT_PORT": "5000", "CHAT_HISTORY_MAX": "10"})
    assert settings.port == 5001
    assert settings.history_max == 10


def test_defaults_follow_the_contract() -> None:
    """Defaults: loopback host, port 4000, no Redis, 64 KiB frames, 1000 messages of history."""
    settings = Settings.from_sources([], {})
    assert (settings.host, settings.port, settings.redis_url) == ("127.0.0.1", 4000, None)
    assert (settings.max_frame_bytes, settings.history_max, settings.presence_limit) == (65536, 1000, 200)
    assert settings.single_process
    assert settings.compression is False


def test_secrets_are_left_out_of_repr() -> None:
    """The JWT secret and the Redis URL (which may hold a password) never appear in repr."""
    settings = Settings(jwt_secret=TEST_SECRET, redis_url="redis://:hunter2hunter2@db:6379/0")
    assert TEST_SECRET not in repr(settings)
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize(
    ("environ", "argv", "named"),
    [
        ({"CHAT_PORT": "http"}, [], "CHAT_PORT"),
        ({}, ["--port", "-1"], "--port"),
        ({}, ["--history-max", "0"], "--history-max"),
        ({"CHAT_REDIS_URL": "http://example"}, [], "CHAT_REDIS_URL"),
        ({"CHAT_JWT_SECRET": "short"}, [], "CHAT_JWT_SECRET"),
        ({"CHAT_COMPRESSION": "maybe"}, [], "CHAT_COMPRESSION"),
        ({"CHAT_LOG_LEVEL": "LOUD"}, [], "CHAT_LOG_LEVEL"),
    ],
)
def test_bad_settings_raise_naming_the_setting(environ: dict[str, str], argv: list[str], named: str) -> None:
    """A bad value raises SettingsError whose message names the flag or variable."""
    with pytest.raises(SettingsError) as error:
        Settings.from_sources(argv, environ)
    assert named in str(error.value)


def test_gateway_with_redis_needs_a_token_key_but_worker_does_not() -> None:
    """A gateway with Redis and no key source is refused; a worker needs no key."""
    environ = {"CHAT_REDIS_URL": "redis://127.0.0.1:1/0"}
    with pytest.raises(SettingsError, match="CHAT_JWT_SECRET"):
        Settings.from_sources([], environ, scope="gateway")
    assert Settings.from_sources([], environ, scope="worker").redis_url == environ["CHAT_REDIS_URL"]


@pytest.mark.parametrize(
    ("module", "args", "env", "named"),
    [
        ("gateway", ["--port", "abc"], {}, "--port"),
        ("gateway", [], {"CHAT_REDIS_URL": "redis://127.0.0.1:1/0"}, "CHAT_JWT_SECRET"),
        ("gateway", ["--no-such-flag"], {}, "arguments"),
        ("worker", [], {}, "CHAT_REDIS_URL"),
        (
            "worker",
            ["--max-attempts", "0"],
            {"CHAT_REDIS_URL": "redis://127.0.0.1:1/0", "CHAT_JWT_SECRET": TEST_SECRET},
            "--max-attempts",
        ),
    ],
)
def test_bad_settings_exit_2_with_one_line(module: str, args: list[str], env: dict[str, str], named: str) -> None:
    """Both processes exit with status 2 and a last stderr line that names the bad setting."""
    result = run(module, *args, env=env)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert named in last


@pytest.mark.parametrize("module", ["gateway", "worker"])
def test_help_lists_every_setting_with_its_variable(module: str) -> None:
    """--help names each setting's environment variable."""
    result = run(module, "--help")
    assert result.returncode == 0
    for env in ("CHAT_REDIS_URL", "CHAT_NODE_ID", "CHAT_LOG_LEVEL", "CHAT_JWT_SECRET"):
        assert env in result.stdout
    assert ("CHAT_PORT" in result.stdout) == (module == "gateway")
