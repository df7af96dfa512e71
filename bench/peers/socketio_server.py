"""python-socketio as a chat node: AsyncServer on aiohttp, nodes joined by AsyncRedisManager.

Events: ``join`` (room name; acknowledged once the socket is in the room) and ``message``
(``{"room":R,"text":T}``), which is emitted as ``message`` to every member of R on every node,
the sender included, with ``from`` set to the socket's user (the ``user`` query parameter).

    python -m bench.peers.socketio_server --port P --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import parse_qs

import socketio  # type: ignore[import-untyped]  # python-socketio ships no type hints
import uvloop
from aiohttp import web


def build(redis_url: str) -> web.Application:
    manager = socketio.AsyncRedisManager(redis_url)
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=manager, cors_allowed_origins="*")
    users: dict[str, str] = {}  # sid -> user, from the handshake

    @sio.event  # type: ignore[untyped-decorator]
    async def connect(sid: str, environ: dict[str, Any]) -> None:
        users[sid] = parse_qs(environ.get("QUERY_STRING", "")).get("user", ["anonymous"])[0]

    @sio.event  # type: ignore[untyped-decorator]
    async def disconnect(sid: str, *args: Any) -> None:
        users.pop(sid, None)

    @sio.event  # type: ignore[untyped-decorator]
    async def join(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    @sio.event  # type: ignore[untyped-decorator]
    async def message(sid: str, data: dict[str, Any]) -> None:
        room = data["room"]
        await sio.emit("message", {"room": room, "from": users.get(sid), "text": data["text"]}, room=room)

    app = web.Application()
    sio.attach(app)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    app = build(args.redis_url)
    web.run_app(app, host="127.0.0.1", port=args.port, backlog=4096, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
