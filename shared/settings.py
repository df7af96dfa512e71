"""Every setting of the gateway and the worker, read once at the edge.

A setting comes from a command-line flag or an environment variable; the flag wins.
``Settings.from_sources(argv, environ)`` is the only place that reads either, so tests
build settings from plain dicts. A bad value raises :class:`SettingsError` naming the
setting; the entry points turn it into exit status 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.redis_url import parse_redis_url


class SettingsError(ValueError):
    """A setting has a value the product cannot run with."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"invalid setting {name}: {problem}")
        self.name = name


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _origins(text: str) -> tuple[str, ...]:
    return tuple(part.strip().rstrip("/") for part in text.split(",") if part.strip())


def _redis_url(text: str) -> str:
    parse_redis_url(text)  # its ValueError becomes a SettingsError naming the setting (from_sources)
    return text


def _level(text: str) -> str:
    level = text.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return level


def _log_format(text: str) -> str:
    if text not in ("json", "text"):
        raise ValueError("expected json or text")
    return text


@dataclass(frozen=True)
class Option:
    """How one setting is spelled on the command line and in the environment."""

    flag: str | None
    env: str
    parse: Callable[[str], Any]
    help: str
    scope: str = "both"  # "gateway", "worker" or "both": which --help lists it
    minimum: float | None = None
    secret: bool = False


def _opt(default: Any, option: Option) -> Any:
    return field(default=default, metadata={"option": option}, repr=not option.secret)


@dataclass(frozen=True)
class Settings:
    """The whole configuration of one gateway or worker process."""

    host: str = _opt("127.0.0.1", Option("--host", "CHAT_HOST", str, "listen address (the worker's metrics too)"))
    port: int = _opt(4000, Option("--port", "CHAT_PORT", int, "listen port", "gateway", minimum=0))
    redis_url: str | None = _opt(
        None,
        Option(
            "--redis-url",
            "CHAT_REDIS_URL",
            _redis_url,
            "redis:// or rediss:// URL (redis+cluster:// for Redis Cluster, "
            "redis+sentinel://host:port/master-name for Sentinel); unset = single-process in-memory mode",
            secret=True,
        ),
    )
    node_id: str = _opt(
        "", Option("--node-id", "CHAT_NODE_ID", str, "name of this process in logs, metrics and welcome")
    )
    redis_prefix: str = _opt("chat", Option("--redis-prefix", "CHAT_REDIS_PREFIX", str, "prefix of every Redis key"))
    jwt_secret: str | None = _opt(
        None, Option(None, "CHAT_JWT_SECRET", str, "HS256 signing key (env only)", secret=True)
    )
    jwt_public_key: str | None = _opt(
        None,
        Option(None, "CHAT_JWT_PUBLIC_KEY", str, "PEM public key for RS256/ES256 tokens (env only)", "gateway"),
    )
    jwks_url: str | None = _opt(
        None, Option("--jwks-url", "CHAT_JWKS_URL", str, "JWKS URL for RS256/ES256 tokens", "gateway")
    )
    jwt_audience: str | None = _opt(
        None, Option("--jwt-audience", "CHAT_JWT_AUDIENCE", str, "required aud claim", "gateway")
    )
    jwt_issuer: str | None = _opt(None, Option("--jwt-issuer", "CHAT_JWT_ISSUER", str, "required iss claim", "gateway"))
    jwt_leeway: float = _opt(
        10.0, Option("--jwt-leeway", "CHAT_JWT_LEEWAY", float, "clock skew allowed on exp/nbf, seconds", "gateway", 0)
    )
    allowed_origins: tuple[str, ...] = _opt(
        (),
        Option(
            "--allowed-origins",
            "CHAT_ALLOWED_ORIGINS",
            _origins,
            "comma list of browser origins allowed to connect, * for any; unset = same origin only",
            "gateway",
        ),
    )
    max_frame_bytes: int = _opt(
        65536, Option("--max-frame-bytes", "CHAT_MAX_FRAME_BYTES", int, "largest client frame", "gateway", 64)
    )
    max_text_length: int = _opt(
        4000, Option("--max-text-length", "CHAT_MAX_TEXT_LENGTH", int, "longest message text, characters", minimum=1)
    )
    history_max: int = _opt(
        1000, Option("--history-max", "CHAT_HISTORY_MAX", int, "messages kept per room (approximate)", minimum=1)
    )
    history_max_age: float = _opt(
        0.0,
        Option(
            "--history-max-age", "CHAT_HISTORY_MAX_AGE", float, "seconds a message is kept; 0 = no age limit", minimum=0
        ),
    )
    inbox_max: int = _opt(
        10_000,
        Option("--inbox-max", "CHAT_INBOX_MAX", int, "requests a bot may have waiting; more are refused", minimum=1),
    )
    replay_max: int = _opt(
        1000,
        Option("--replay-max", "CHAT_REPLAY_MAX", int, "most messages replayed on one join with since", "gateway", 1),
    )
    presence_limit: int = _opt(
        200,
        Option(
            "--presence-limit",
            "CHAT_PRESENCE_LIMIT",
            int,
            "room size above which no per-user presence is sent",
            minimum=1,
        ),
    )
    presence_ttl: float = _opt(
        60.0,
        Option("--presence-ttl", "CHAT_PRESENCE_TTL", float, "seconds a crashed node's users stay present", minimum=5),
    )
    heartbeat: float = _opt(
        25.0, Option("--heartbeat", "CHAT_HEARTBEAT", float, "seconds between server pings", "gateway", 1)
    )
    typing_timeout: float = _opt(
        6.0,
        Option(
            "--typing-timeout",
            "CHAT_TYPING_TIMEOUT",
            float,
            "seconds before typing turns false by itself",
            "gateway",
            0.1,
        ),
    )
    compression: bool = _opt(
        False,
        Option(
            "--compression",
            "CHAT_COMPRESSION",
            _bool,
            "offer permessage-deflate (costs memory per connection)",
            "gateway",
        ),
    )
    outbox_max_bytes: int = _opt(
        1 << 20,
        Option(
            "--outbox-max-bytes",
            "CHAT_OUTBOX_MAX_BYTES",
            int,
            "unsent bytes a client may fall behind before it is closed with 4008",
            "gateway",
            1024,
        ),
    )
    max_connections_per_user: int = _opt(
        20, Option("--max-connections-per-user", "CHAT_MAX_CONNECTIONS_PER_USER", int, "per node", "gateway", 1)
    )
    max_rooms_per_connection: int = _opt(
        100, Option("--max-rooms-per-connection", "CHAT_MAX_ROOMS_PER_CONNECTION", int, "joined rooms", "gateway", 1)
    )
    max_rooms_per_node: int = _opt(
        100_000,
        Option("--max-rooms-per-node", "CHAT_MAX_ROOMS_PER_NODE", int, "rooms with local members", "gateway", 1),
    )
    messages_per_second: float = _opt(
        20.0,
        Option(
            "--messages-per-second",
            "CHAT_MESSAGES_PER_SECOND",
            float,
            "sustained frames/s per connection",
            "gateway",
            0.1,
        ),
    )
    messages_burst: int = _opt(
        40, Option("--messages-burst", "CHAT_MESSAGES_BURST", int, "frames a connection may send at once", "gateway", 1)
    )
    http_per_second: float = _opt(
        20.0, Option("--http-per-second", "CHAT_HTTP_PER_SECOND", float, "API requests/s per user", "gateway", 0.1)
    )
    drain_seconds: float = _opt(
        10.0,
        Option(
            "--drain-seconds",
            "CHAT_DRAIN_SECONDS",
            float,
            "time a stopping process takes to hand clients or work back",
            minimum=0,
        ),
    )
    dev_login: bool = _opt(
        False,
        Option(
            "--dev-login",
            "CHAT_DEV_LOGIN",
            _bool,
            "serve /api/dev/token that mints tokens (development only)",
            "gateway",
        ),
    )
    in_process_workers: int = _opt(
        1,
        Option(
            "--in-process-workers",
            "CHAT_IN_PROCESS_WORKERS",
            int,
            "workers run inside the gateway when no Redis URL is set (0 = none)",
            "gateway",
            0,
        ),
    )
    worker_concurrency: int = _opt(
        64,
        Option(
            "--worker-concurrency", "CHAT_WORKER_CONCURRENCY", int, "requests one worker handles at once", "worker", 1
        ),
    )
    worker_max_bots: int = _opt(
        1000, Option("--worker-max-bots", "CHAT_WORKER_MAX_BOTS", int, "bots one worker serves", "worker", 1)
    )
    lease_seconds: float = _opt(
        10.0,
        Option(
            "--lease-seconds", "CHAT_LEASE_SECONDS", float, "a dead worker's bots move after this long", "worker", 1
        ),
    )
    visibility_timeout: float = _opt(
        30.0,
        Option(
            "--visibility-timeout",
            "CHAT_VISIBILITY_TIMEOUT",
            float,
            "seconds before another worker retries a request whose worker went silent",
            "worker",
            1,
        ),
    )
    max_attempts: int = _opt(
        3, Option("--max-attempts", "CHAT_MAX_ATTEMPTS", int, "tries before a request is dead-lettered", "worker", 1)
    )
    client_id_window: float = _opt(
        600.0,
        Option(
            "--client-id-window",
            "CHAT_CLIENT_ID_WINDOW",
            float,
            "seconds a message's client_id is remembered, so a resend is stored once",
            "gateway",
            1,
        ),
    )
    stream_max_bytes: int = _opt(
        262_144,
        Option(
            "--stream-max-bytes",
            "CHAT_STREAM_MAX_BYTES",
            int,
            "most UTF-8 bytes of text kept for a reply in progress (late joiners get it)",
            "worker",
            1,
        ),
    )
    stream_ttl: float = _opt(
        300.0,
        Option(
            "--stream-ttl",
            "CHAT_STREAM_TTL",
            float,
            "seconds a reply in progress is kept after its last piece",
            "worker",
            1,
        ),
    )
    delta_interval_ms: float = _opt(
        50.0,
        Option(
            "--delta-interval-ms",
            "CHAT_DELTA_INTERVAL_MS",
            float,
            "a bot's pieces of text within this many ms go out as one delta (0 = each at once)",
            "worker",
            0,
        ),
    )
    metrics_port: int = _opt(
        9100, Option("--metrics-port", "CHAT_METRICS_PORT", int, "worker's /metrics port (0 = off)", "worker", 0)
    )
    log_level: str = _opt("INFO", Option("--log-level", "CHAT_LOG_LEVEL", _level, "DEBUG, INFO, WARNING or ERROR"))
    log_format: str = _opt("json", Option("--log-format", "CHAT_LOG_FORMAT", _log_format, "json or text"))

    def __post_init__(self) -> None:
        if not self.node_id:
            object.__setattr__(self, "node_id", f"{socket.gethostname()}-{os.getpid()}")
        if self.jwt_secret is not None and len(self.jwt_secret) < 32:
            raise SettingsError("CHAT_JWT_SECRET", "must be at least 32 characters")
        if not 1 <= len(self.redis_prefix) <= 32 or any(c in self.redis_prefix for c in "{}: "):
            raise SettingsError("CHAT_REDIS_PREFIX", "1-32 characters without braces, colons or spaces")

    @property
    def single_process(self) -> bool:
        """True when no Redis is configured: gateway and workers share an in-memory broker."""
        return self.redis_url is None

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def options(cls) -> list[tuple[dataclasses.Field[Any], Option]]:
        return [(f, f.metadata["option"]) for f in dataclasses.fields(cls)]

    @classmethod
    def from_sources(
        cls,
        argv: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
        *,
        scope: str = "both",
        prog: str = "chat",
    ) -> Settings:
        """Build settings from flags (``argv``) and environment (``environ``); flags win.

        Raises SettingsError for a bad value. ``--help`` exits 0 after listing every setting
        of ``scope``.
        """
        environ = os.environ if environ is None else environ
        parser = build_parser(scope, prog)
        parsed = vars(parser.parse_args(list(argv)))
        values: dict[str, Any] = {}
        for spec, option in cls.options():
            raw = parsed.get(spec.name)
            name = option.flag or option.env
            if raw is None and option.env in environ:
                raw, name = environ[option.env], option.env
            if raw is None:
                continue
            try:
                value = option.parse(raw)
            except (TypeError, ValueError) as exc:
                raise SettingsError(name, str(exc) or f"cannot parse {raw!r}") from None
            if option.minimum is not None and value < option.minimum:
                raise SettingsError(name, f"must be at least {option.minimum:g}")
            values[spec.name] = value
        settings = cls(**values)
        if scope == "gateway":
            settings.require_token_keys()
        return settings

    def require_token_keys(self) -> None:
        """A gateway with Redis must be told how to check tokens (no ephemeral key across nodes)."""
        if self.redis_url and not (self.jwt_secret or self.jwt_public_key or self.jwks_url):
            raise SettingsError(
                "CHAT_JWT_SECRET", "required with a Redis URL (or set CHAT_JWT_PUBLIC_KEY / CHAT_JWKS_URL)"
            )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise SettingsError("arguments", message)


def build_parser(scope: str, prog: str) -> argparse.ArgumentParser:
    """The argument parser whose --help lists every setting of ``scope`` with its env name and default."""
    parser = _Parser(prog=prog, description="Settings come from these flags or the environment variables named.")
    for spec, option in Settings.options():
        if scope != "both" and option.scope not in (scope, "both"):
            continue
        default = "" if option.secret else f", default {spec.default!r}"
        if option.flag is None:
            parser.epilog = (parser.epilog or "") + f" {option.env}: {option.help}."
            continue
        kind = None if option.parse is _bool else "VALUE"
        parser.add_argument(
            option.flag,
            dest=spec.name,
            metavar=kind,
            nargs="?" if option.parse is _bool else None,
            const="true" if option.parse is _bool else None,
            default=None,
            help=f"{option.help} [env {option.env}{default}]",
        )
    return parser
