"""Redis replies in progress and cancels (see :class:`shared.broker.base.Replies`).

A reply being written is a hash per reply (attempt, last piece, text so far) and a set per room
naming them, all under the room's hash tag, both expiring a while after the last piece. A piece
is added and its delta published by one script, so a joiner's read and the live deltas never
overlap or leave a gap. Cancels are a marker per request plus a notice on the workers' control
channel, which the worker answering the request hears (see ``RedisWorkerRoster``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from shared import protocol
from shared.broker.base import Latest, RequestInfo
from shared.broker.redis_link import CommandPipe, Script
from shared.broker.redis_replies import text
from shared.broker.redis_topology import Topology
from shared.broker.redis_workers import RedisWorkerRoster, cancel_notice
from shared.keys import STREAM_TEXT, Keys
from shared.models import ReplyInFlight
from shared.packets import StreamPosition
from shared.settings import Settings

STREAM_PUSH = Script("stream_push")
STREAMS_READ = Script("streams_read")
REQUEST_STATE = Script("request_state")
CANCEL = Script("cancel")
REQUEST_START = Script("request_start")
CANCEL_TTL = 24 * 3600  # seconds a cancel is remembered: longer than any request waits
LATEST_SCAN = 500  # inbox entries looked through for a newer message of the same user


class RedisReplies:
    def __init__(
        self, topology: Topology, pipe: CommandPipe, keys: Keys, settings: Settings, roster: RedisWorkerRoster
    ) -> None:
        self.pipe = pipe
        self.keys = keys
        self.settings = settings
        self.publish_command = topology.publish_command
        self.roster = roster  # its control-channel subscription carries the cancel notices

    async def push(self, room: str, position: StreamPosition, piece: str, packet: bytes) -> bool:
        k = self.keys
        args = [
            k.channel(room),
            self.publish_command,
            packet,
            position.reply_to,
            position.attempt,
            position.seq,
            piece,
            self.settings.stream_max_bytes,
            math.ceil(self.settings.stream_ttl * 1000),
        ]
        reply_to = position.reply_to
        keys = [k.stream(room, reply_to), k.stream_text(room, reply_to), k.streams(room), k.cancel(room, reply_to)]
        return bool(await self.pipe.script(STREAM_PUSH, keys, args))

    async def in_flight(self, room: str) -> list[ReplyInFlight]:
        k = self.keys
        flat = await self.pipe.script(STREAMS_READ, [k.streams(room)], [k.stream(room, ""), STREAM_TEXT])
        replies = []
        for i in range(0, len(flat), 4):
            reply_to, attempt, seq, written = (text(v) for v in flat[i : i + 4])
            replies.append(ReplyInFlight(StreamPosition(reply_to, int(attempt), int(seq)), written))
        return replies

    async def clear(self, room: str, reply_to: str) -> None:
        k = self.keys
        await self.pipe.execute("DEL", k.stream(room, reply_to), k.stream_text(room, reply_to))
        await self.pipe.execute("SREM", k.streams(room), reply_to)

    async def request(self, room: str, message_id: str) -> RequestInfo:
        k = self.keys
        keys = [k.history(room), k.replied(room, message_id), k.cancel(room, message_id), k.stream(room, message_id)]
        tail, replied, cancelled, streaming = await self.pipe.script(REQUEST_STATE, keys, [message_id])
        return RequestInfo(
            sender=protocol.user_sender(tail) if tail else None,
            answered=bool(replied),
            streaming=bool(streaming),
            cancelled=bool(cancelled),
        )

    async def cancel(self, room: str, message_id: str, *, announced: bool) -> None:
        args = [
            "announced" if announced else "announce",
            CANCEL_TTL,
            self.keys.control_channel(),
            cancel_notice(room, message_id),
        ]
        await self.pipe.script(CANCEL, [self.keys.cancel(room, message_id)], args)

    async def start(self, room: str, message_id: str, packet: bytes, *, latest_of: Latest | None = None) -> str | None:
        k = self.keys
        entry, user = (latest_of.entry_id, latest_of.user) if latest_of is not None else ("0-0", "")
        args = [self.publish_command, k.channel(room), packet, entry, user, LATEST_SCAN]
        mark = await self.pipe.script(REQUEST_START, [k.cancel(room, message_id), k.inbox(room)], args)
        return text(mark) if mark else None

    async def cancel_mark(self, room: str, message_id: str) -> str | None:
        mark = await self.pipe.execute("GET", self.keys.cancel(room, message_id))
        return text(mark) if mark is not None else None

    def on_cancel(self, handler: Callable[[str, str], None]) -> None:
        self.roster.on_cancel(handler)
