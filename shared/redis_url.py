"""Redis URLs: which deployment a URL names and how to log in to it. Pure; stdlib only.

Three deployments are spelled as URLs:

- one server: ``redis://[user:password@]host[:port][/db][?option=value...]``, ``rediss://`` for
  TLS, ``unix:///path/to/socket``;
- Redis Cluster: ``redis+cluster://[user:password@]host:port[,host:port...]`` (seed nodes; any
  primary of the cluster will do), ``rediss+cluster://`` for TLS;
- Sentinel: ``redis+sentinel://[user:password@]host:port[,host:port...]/master-name[/db]`` (the
  sentinels, default port 26379), ``rediss+sentinel://`` for TLS to the sentinels and the master.

:func:`parse_redis_url` raises ValueError saying what is wrong, so that settings can refuse a URL
before anything connects (:mod:`shared.settings` names the setting). The broker builds its client
from the :class:`RedisTarget`; redis-py reads a single server's URL itself, options included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

SCHEMES = {
    "redis": "single",
    "rediss": "single",
    "unix": "single",
    "redis+cluster": "cluster",
    "rediss+cluster": "cluster",
    "redis+sentinel": "sentinel",
    "rediss+sentinel": "sentinel",
}
DEFAULT_PORTS = {"single": 6379, "cluster": 6379, "sentinel": 26379}
# options of a single server's URL that redis-py converts, and would refuse when it connects
NUMBER_OPTIONS = {
    "db": int,
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "socket_read_size": int,
    "max_connections": int,
    "health_check_interval": int,
    "ssl_min_version": int,
    "timeout": float,
    "protocol": int,
}


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is and how to log in, read from a URL without any I/O."""

    kind: str  # "single", "cluster" or "sentinel"
    url: str = field(repr=False)  # as given: redis-py reads single-server URLs itself
    nodes: tuple[tuple[str, int], ...] = ()  # cluster seed nodes, or the sentinels
    service: str = ""  # the master's name in Sentinel
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [::1]:7000
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError(f"no host in {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, int(port_text)


def _check_single(url: str) -> None:
    """Refuse what redis-py would refuse of a single server's URL, before it connects."""
    parts = urlsplit(url)
    _ = parts.port  # raises ValueError for a port that is not a number or out of range
    for name, values in parse_qs(parts.query).items():
        convert = NUMBER_OPTIONS.get(name)
        if convert is not None and values:
            try:
                convert(values[0])
            except ValueError:
                raise ValueError(f"option {name} must be a number, not {values[0]!r}") from None
    path = parts.path.strip("/")
    if parts.scheme != "unix" and path and not path.isdigit():
        raise ValueError(f"the path must be a database number, not {parts.path!r}")


def parse_redis_url(url: str) -> RedisTarget:
    """Read a Redis URL; raises ValueError saying what is wrong with it. Does no I/O."""
    parts = urlsplit(url)
    kind = SCHEMES.get(parts.scheme)
    if kind is None:
        raise ValueError(f"unsupported scheme {parts.scheme!r}: expected one of {', '.join(SCHEMES)}")
    if kind == "single":
        _check_single(url)
        return RedisTarget(kind, url)
    if parts.query or parts.fragment:
        raise ValueError("query options are not supported in cluster and sentinel URLs")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    nodes = tuple(_host_port(h.strip(), DEFAULT_PORTS[kind]) for h in hosts.split(",") if h.strip())
    if not nodes:
        raise ValueError("no host given")
    path = [unquote(p) for p in parts.path.split("/") if p]
    service, db = "", 0
    if kind == "cluster" and path not in ([], ["0"]):
        raise ValueError("Redis Cluster has only database 0")
    if kind == "sentinel":
        if not 1 <= len(path) <= 2:
            raise ValueError("expected redis+sentinel://host:port[,host:port...]/master-name[/db]")
        service = path[0]
        if len(path) == 2:
            if not path[1].isdigit():
                raise ValueError(f"the database must be a number, not {path[1]!r}")
            db = int(path[1])
    return RedisTarget(
        kind,
        url,
        nodes,
        service,
        db,
        unquote(username) or None,
        unquote(password) or None,
        parts.scheme.startswith("rediss"),
    )
