"""The floor: the least a Redis-backed WebSocket chat node can do, and nothing more.

No auth, history, presence or bounded outboxes. Clients send ``{"type":"join","room":R}`` (answered
with ``joined``) and ``{"type":"message","room":R,"text":T}``; every member of R on every node gets
``{"type":"message","room":R,"from":U,"text":T}``, the sender too. A node holds one Redis pub/sub
subscription per room while it has a local member, encodes each message once and sends the same text
to every local member. Publishes go through one writer task that pipelines whatever is queued, since
redis-py's asyncio pool raises past 100 commands in flight.

    python -m bench.peers.bare_server --port P --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
import redis.asyncio as aioredis
import uvloop
from aiohttp import WSMsgType, web

CHANNEL = "bare:room:"


class Node:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.pubsub = redis.pubsub(ignore_subscribe_messages=True)
        self.rooms: dict[str, set[web.WebSocketResponse]] = {}  # room -> local members
        self.outgoing: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()  # publishes for the writer

    async def join(self, room: str, ws: web.WebSocketResponse) -> None:
        members = self.rooms.setdefault(room, set())
        if not members:
            await self.pubsub.subscribe(CHANNEL + room)
        members.add(ws)

    async def leave(self, room: str, ws: web.WebSocketResponse) -> None:
        members = self.rooms.get(room)
        if members is not None:
            members.discard(ws)
            if not members:
                del self.rooms[room]
                await self.pubsub.unsubscribe(CHANNEL + room)

    async def write_publishes(self) -> None:
        while True:
            batch = [await self.outgoing.get()]
            while not self.outgoing.empty() and len(batch) < 1000:
                batch.append(self.outgoing.get_nowait())
            async with self.redis.pipeline(transaction=False) as pipe:
                for channel, payload in batch:
                    pipe.publish(channel, payload)
                await pipe.execute()

    async def read_pubsub(self) -> None:
        # A subscription of the node's own keeps listen() alive while no room has a member.
        await self.pubsub.subscribe("bare:node")
        async for event in self.pubsub.listen():
            room = event["channel"].decode()[len(CHANNEL) :]
            text = event["data"].decode()
            for ws in list(self.rooms.get(room, ())):
                if not ws.closed:
                    await ws.send_str(text)


NODE = web.AppKey("node", Node)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    node = request.app[NODE]
    user = request.query.get("user", "anonymous")
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    joined: set[str] = set()
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            frame = orjson.loads(msg.data)
            room = str(frame.get("room"))
            if frame.get("type") == "join":
                await node.join(room, ws)
                joined.add(room)
                await ws.send_str(orjson.dumps({"type": "joined", "room": room}).decode())
            elif frame.get("type") == "message" and room in joined:
                out = {"type": "message", "room": room, "from": user, "text": frame.get("text")}
                node.outgoing.put_nowait((CHANNEL + room, orjson.dumps(out)))
    finally:
        for room in joined:
            await node.leave(room, ws)
    return ws


async def background(app: web.Application) -> AsyncIterator[None]:
    node = app[NODE]
    tasks = [asyncio.create_task(node.write_publishes()), asyncio.create_task(node.read_pubsub())]
    yield
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await node.pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves PubSub.aclose untyped
    await node.redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    app = web.Application()
    app[NODE] = Node(aioredis.Redis.from_url(args.redis_url))
    app.cleanup_ctx.append(background)
    app.router.add_get("/ws", websocket)
    web.run_app(app, host="127.0.0.1", port=args.port, backlog=4096, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
