"""This node's rooms: which local connections are in which room, and delivery to them.

The hub holds one broker subscription per room that has a local member. It subscribes on the
first local join and unsubscribes a little after the last leave (re-checking that nobody came
back), so clients that flap do not churn SUBSCRIBE/UNSUBSCRIBE. Each event is framed once and
the same bytes are written to every local member.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from gateway.connection import Connection
from gateway.wire import text_frame
from shared import packets, protocol
from shared.broker import FanOut, History
from shared.packets import Packet

log = logging.getLogger(__name__)
UNSUBSCRIBE_DELAY = 1.0


class DeliveryObserver(Protocol):
    def delivered(self, frame: bytes, count: int, message_id: str, seconds: float) -> None:
        """One room event was written to ``count`` local connections in ``seconds``."""


class Hub:
    def __init__(self, fanout: FanOut, observer: DeliveryObserver | None = None) -> None:
        self.fanout = fanout
        self.rooms: dict[str, set[Connection]] = {}
        self._subscribing: dict[str, asyncio.Future[None]] = {}
        self._subscribed: set[str] = set()
        self._unsubscribe_timers: dict[str, asyncio.TimerHandle] = {}
        self._observer = observer
        self.last_ids: dict[str, str] = {}  # newest message id delivered per room, to fill gaps after a reconnect
        self._recovering: dict[str, list[Packet]] = {}  # rooms catching up: live packets wait here

    def deliver(self, room: str, packet: Packet) -> None:
        """Write one room event to every local member; never blocks.

        Raises BadPacket, having written nothing, when the frame is not one clients can read.
        """
        members = self.rooms.get(room)
        if not members:
            return
        message_id, exclude, frame, position = packet
        packets.check_frame(frame)
        recovering = self._recovering.get(room)
        if recovering is not None:
            recovering.append(packet)
            return
        started = time.perf_counter()
        if message_id:
            self.last_ids[room] = message_id
        framed = text_frame(frame)
        delivered = 0
        for connection in tuple(members):
            if connection.user == exclude:
                continue
            if connection.session.pending and connection.session.buffered(room, message_id, position, framed):
                continue
            if connection.held_acks is not None:
                connection.write_copy(framed, message_id)
            else:
                connection.write(framed)
            delivered += 1
        if self._observer is not None:
            self._observer.delivered(frame, delivered, message_id, time.perf_counter() - started)

    async def add(self, room: str, connection: Connection) -> None:
        """Register a member; returns once this node receives the room's events."""
        self.rooms.setdefault(room, set()).add(connection)
        timer = self._unsubscribe_timers.pop(room, None)
        if timer is not None:
            timer.cancel()
        if room in self._subscribed:
            return
        waiting = self._subscribing.get(room)
        if waiting is None:
            waiting = self._subscribing[room] = asyncio.ensure_future(self._subscribe(room))
        try:
            await asyncio.shield(waiting)
        except Exception:
            self.remove(room, connection)
            raise

    async def _subscribe(self, room: str) -> None:
        try:
            await self.fanout.subscribe(room)
            self._subscribed.add(room)
        finally:
            self._subscribing.pop(room, None)

    def remove(self, room: str, connection: Connection) -> None:
        members = self.rooms.get(room)
        if members is None:
            return
        members.discard(connection)
        if not members:
            del self.rooms[room]
            self.last_ids.pop(room, None)
            if room in self._subscribed and room not in self._unsubscribe_timers:
                loop = asyncio.get_running_loop()
                self._unsubscribe_timers[room] = loop.call_later(UNSUBSCRIBE_DELAY, self._unsubscribe_if_empty, room)

    def _unsubscribe_if_empty(self, room: str) -> None:
        self._unsubscribe_timers.pop(room, None)
        if room in self.rooms or room not in self._subscribed:
            return
        self._subscribed.discard(room)
        task = asyncio.get_running_loop().create_task(self.fanout.unsubscribe(room))
        task.add_done_callback(_log_failure)

    async def catch_up(self, room: str, history: History, limit: int) -> bool:
        """Deliver the messages a room missed while the broker link was down, then the live ones.

        Returns False when history no longer covers the gap; the caller must then make the room's
        clients resume on their own (they hold their last id), since delivering out of order or
        with a hole is never allowed.
        """
        last = self.last_ids.get(room)
        if last is None or room in self._recovering or room not in self.rooms:
            return True
        self._recovering[room] = []
        try:
            page = await history.read_after(room, last, limit)
        finally:
            waiting = self._recovering.pop(room)
        newest = last
        for message_id, frame in page.entries:
            self.deliver(room, Packet(message_id, "", frame))
            newest = message_id
        for packet in waiting:
            if packet.message_id and not protocol.id_newer(packet.message_id, newest):
                continue  # already delivered from history
            self.deliver(room, packet)
        return page.complete

    def delivered(self, room: str, message_id: str) -> bool:
        """Whether this node has written ``message_id`` of ``room`` to the room's members already."""
        last = self.last_ids.get(room)
        return last is not None and not protocol.id_newer(message_id, last)

    def local_users(self, room: str) -> set[str]:
        return {c.user for c in self.rooms.get(room, ())}

    def connections(self) -> set[Connection]:
        return {c for members in self.rooms.values() for c in members}

    def close(self) -> None:
        for timer in self._unsubscribe_timers.values():
            timer.cancel()
        self._unsubscribe_timers.clear()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("unsubscribe failed: %s", task.exception())
