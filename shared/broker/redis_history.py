"""Room histories on Redis: a stream per room, appended to by the append script.

One script call stores and trims, publishes the message and queues a request in the bot's
inbox, in one round trip; the frames it publishes are built here with holes for the id and the
time Redis gives (see ``lua/append.lua``). Reads are XRANGE and XREVRANGE.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from shared import packets, protocol
from shared.broker.base import Appended, ClientId, HistoryPage, InboxFull, ReplyCancelled
from shared.broker.redis_link import CommandPipe, Script
from shared.broker.redis_replies import fields as _fields
from shared.broker.redis_replies import text as _text
from shared.broker.redis_topology import Topology
from shared.keys import Keys
from shared.settings import Settings

APPEND = Script("append")
REPLIED_TTL = 7 * 24 * 3600  # a retried request older than this is unlikely; keep markers a week
# the frames of an append are written here, with holes (NUL bytes, which JSON never holds raw)
# where append.lua puts the id and the time Redis gave: frames (holes: id, ts), header (hole: id)
HOLE = "\0"
PACKET_HEADER = packets.pack(b"", message_id=HOLE)


class RedisHistory:
    def __init__(self, topology: Topology, pipe: CommandPipe, keys: Keys, settings: Settings) -> None:
        self.pipe = pipe
        self.keys = keys
        self.settings = settings
        self.publish_command = topology.publish_command  # the fan-out's: the appended message goes out as its events do
        self.inbox_notices = topology.inbox_notices  # a queued request is announced to readers on a cluster

    async def append(
        self,
        room: str,
        tail: bytes,
        *,
        request: bool = False,
        reply_to: str | None = None,
        client_id: ClientId | None = None,
        cancelled: bool = False,
    ) -> Appended:
        k = self.keys
        if client_id is not None:
            marker, marker_ttl = k.sent(room, client_id.user, client_id.id), math.ceil(self.settings.client_id_window)
        else:
            marker, marker_ttl = k.replied(room, reply_to or "-"), REPLIED_TTL
        keys = [
            k.history(room),
            k.inbox(room),
            k.bot(room),
            marker,
            k.stream(room, reply_to or "-"),
            k.streams(room),
            k.cancel(room, reply_to or "-"),
            k.stream_text(room, reply_to or "-"),
        ]
        args = [
            k.channel(room),
            tail,
            protocol.compose_message(HOLE, tail),
            protocol.compose_message(HOLE, tail, queued=True) if request else b"",
            PACKET_HEADER,
            self.settings.history_max,
            int(self.settings.history_max_age * 1000),
            "1" if request else "0",
            "1" if reply_to is not None or client_id is not None else "0",
            marker_ttl,
            self.publish_command,
            self.settings.inbox_max,
            "1" if self.inbox_notices else "0",
            reply_to or "",
            "1" if cancelled else "0",
        ]
        message_id, duplicate, queued = await self.pipe.script(APPEND, keys, args)
        message_id = _text(message_id)
        if not message_id:
            raise ReplyCancelled(reply_to) if duplicate else InboxFull(room)
        return Appended(message_id, protocol.message_ts(message_id), duplicate=bool(duplicate), queued=bool(queued))

    @staticmethod
    def _entries(raw: list[Any]) -> list[tuple[str, bytes]]:
        entries = []
        for entry_id, fields in raw:
            message_id = _text(entry_id)
            tail = _fields(fields)[b"t"]
            entries.append((message_id, protocol.compose_message(message_id, tail)))
        return entries

    async def read_after(self, room: str, since: str, limit: int) -> HistoryPage:
        key = self.keys.history(room)
        after, newest = await asyncio.gather(
            self.pipe.call("XRANGE", key, since, "+", "COUNT", limit + 1),
            self.pipe.call("XREVRANGE", key, "+", "-", "COUNT", 1),
        )
        entries = self._entries(after)
        last_id = _text(newest[0][0]) if newest else None
        complete = bool(entries) and entries[0][0] == since
        if complete:
            entries = entries[1:]
        elif not entries and last_id is not None and protocol.id_newer(since, last_id):
            complete = True  # newer than every kept message: trimming only drops older ones, so nothing was missed
        if entries and last_id is not None and entries[-1][0] != last_id and len(entries) >= limit:
            # more than ``limit`` messages were missed: replay the newest ones, never a prefix with a gap after it
            latest = await self.read_latest(room, limit)
            return HistoryPage([e for e in latest.entries if protocol.id_newer(e[0], since)], latest.last_id, False)
        return HistoryPage(entries, last_id, complete)

    async def read_latest(self, room: str, limit: int) -> HistoryPage:
        raw = await self.pipe.call("XREVRANGE", self.keys.history(room), "+", "-", "COUNT", limit)
        entries = self._entries(raw)[::-1]
        return HistoryPage(entries, entries[-1][0] if entries else None, True)

    async def read_range(self, room: str, after: str, limit: int) -> HistoryPage:
        key = self.keys.history(room)
        raw, newest = await asyncio.gather(
            self.pipe.call("XRANGE", key, f"({after}", "+", "COUNT", limit),
            self.pipe.call("XREVRANGE", key, "+", "-", "COUNT", 1),
        )
        return HistoryPage(self._entries(raw), _text(newest[0][0]) if newest else None, True)

    async def last_id(self, room: str) -> str | None:
        raw = await self.pipe.call("XREVRANGE", self.keys.history(room), "+", "-", "COUNT", 1)
        return _text(raw[0][0]) if raw else None
