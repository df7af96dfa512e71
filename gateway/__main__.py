"""``python -m gateway``: read settings, then serve HTTP and WebSocket until stopped."""

from __future__ import annotations

import os
import secrets
import sys

from aiohttp import web

from shared import logs
from shared.settings import Settings, SettingsError

PROG = "chat-gateway"


def main(argv: list[str] | None = None) -> None:
    try:
        settings = Settings.from_sources(sys.argv[1:] if argv is None else argv, os.environ, scope="gateway", prog=PROG)
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.configure(settings.log_level, settings.log_format, settings.node_id)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    from gateway.app import create_app
    from gateway.auth import mint_token

    secret = None
    if settings.single_process and not (settings.jwt_secret or settings.jwt_public_key or settings.jwks_url):
        # like a notebook server: an ephemeral key and a ready-to-open URL; the token is in the
        # fragment, which browsers never send to the server, so it stays out of access logs
        secret = secrets.token_urlsafe(32)
        token = mint_token(secret, "you", ttl=7 * 24 * 3600, name="you", roles=["admin"])
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        print(
            f"\n  Chat is running. Open this URL in a browser:\n\n    http://{host}:{settings.port}/#token={token}\n",
            flush=True,
        )
    try:
        app = create_app(settings, secret=secret)
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=None,
        access_log=None,
        shutdown_timeout=settings.drain_seconds + 5,
    )


if __name__ == "__main__":
    main()
