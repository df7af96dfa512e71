"""The write side of one client socket: frames out in as few writes as possible, with a byte bound.

Room events arrive already framed (see :mod:`gateway.wire`) and are written straight to the
socket's transport: no task, queue or copy per member. The transport's own buffer is the
outbox; when a client falls more than ``max_buffer`` bytes behind, :meth:`Outbox.fell_behind`
says so (the connection has the node close it with 4008, and it recovers with ``since``). With
compression on, frames go through aiohttp's writer instead, because permessage-deflate needs
per-connection state.

Two things save writes: the frames that answer one event are corked into one write, and a
sender's ack waits (up to :data:`ACK_WAIT`) for the room's copy of its message to go out with it.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import WSMsgType, web

from gateway.wire import text_frame

# How long an ack waits for the room's copy of its message to share a write. The copy is one
# pub/sub hop behind the ack, usually well under a millisecond; a copy held up by a broker
# reconnect must not hold the ack up too.
ACK_WAIT = 0.05


class Outbox:
    """What is written to one client, and when.

    :class:`~gateway.connection.Connection` is one: the hub calls ``write`` or ``write_copy`` and
    reads ``held_acks`` for every event it delivers, so they are the connection's own methods and
    attributes, with no object in between.
    """

    __slots__ = ("_corked", "closing", "compress", "held_acks", "max_buffer", "transport", "ws")

    def __init__(
        self,
        ws: web.WebSocketResponse | None,
        transport: asyncio.Transport,
        *,
        max_buffer: int,
        compress: bool,
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.max_buffer = max_buffer
        self.compress = compress
        self.closing = False  # a close has begun: nothing more is written
        self._corked: list[bytes] | None = None  # frames gathered for one write (see cork)
        # acks waiting for the room's copy of their message, by message id (see hold_ack);
        # None when there are none, which the hub checks for every delivery
        self.held_acks: dict[str, tuple[bytes, asyncio.TimerHandle]] | None = None

    def fell_behind(self) -> None:
        """The client is more than ``max_buffer`` bytes behind: what happens to it is the owner's call."""
        raise NotImplementedError

    def send(self, frame: bytes) -> None:
        """Send one server frame (JSON bytes) to this client."""
        if self.held_acks is not None:
            self._release_acks()  # answers go out in the order of the frames they answer
        if self.compress:
            self._send_compressed(frame)
        else:
            self.write(text_frame(frame))

    def write(self, framed: bytes) -> None:
        """Write an already framed event; see :meth:`fell_behind` if the client is too far behind."""
        if self.closing or self.transport.is_closing():
            return
        if self.compress:
            # framed bytes cannot be compressed as they are: strip the header and send the payload
            self._send_compressed(_payload(framed))
            return
        if self._corked is not None:
            self._corked.append(framed)
            return
        self.transport.write(framed)
        if self.transport.get_write_buffer_size() > self.max_buffer:
            self.fell_behind()

    def hold_ack(self, frame: bytes, message_id: str) -> None:
        """Keep the sender's ``frame`` until its copy of ``message_id`` comes (see :meth:`write_copy`).

        Without the copy within :data:`ACK_WAIT` it goes out alone. With compression it goes out
        at once: the copy and the ack are separate messages to aiohttp's writer anyway.
        """
        if self.compress:
            self.send(frame)
            return
        timer = asyncio.get_running_loop().call_later(ACK_WAIT, self._release_ack, message_id)
        if self.held_acks is None:
            self.held_acks = {}
        self.held_acks[message_id] = (text_frame(frame), timer)

    def write_copy(self, framed: bytes, message_id: str) -> None:
        """Write a room event; an ack held for it (see :meth:`hold_ack`) goes in the same write."""
        held = self._take_ack(message_id)
        if held is None:
            self.write(framed)
            return
        ack, timer = held
        timer.cancel()
        self.write(framed + ack)

    def drop_acks(self) -> None:
        """The socket is gone: the held acks will never be written."""
        for _, timer in (self.held_acks or {}).values():
            timer.cancel()
        self.held_acks = None

    def _release_ack(self, message_id: str) -> None:
        held = self._take_ack(message_id)
        if held is not None:
            self.write(held[0])

    def _release_acks(self) -> None:
        held, self.held_acks = self.held_acks or {}, None
        for ack, timer in held.values():  # in the order they were held
            timer.cancel()
            self.write(ack)

    def _take_ack(self, message_id: str) -> tuple[bytes, asyncio.TimerHandle] | None:
        if self.held_acks is None:
            return None
        held = self.held_acks.pop(message_id, None)
        if not self.held_acks:
            self.held_acks = None
        return held

    def cork(self) -> None:
        """Gather the frames written from now on (the answers to one event) into one write."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        """Write what was gathered since :meth:`cork`, in one write."""
        corked, self._corked = self._corked, None
        if corked:
            self.write(corked[0] if len(corked) == 1 else b"".join(corked))

    def _send_compressed(self, frame: bytes) -> None:
        if self.closing or self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size() > self.max_buffer:
            self.fell_behind()
            return
        assert self.ws is not None  # compression is aiohttp's
        task = asyncio.get_running_loop().create_task(self.ws.send_frame(frame, WSMsgType.TEXT))
        task.add_done_callback(_ignore_result)


def _payload(framed: bytes) -> bytes:
    marker = framed[1] & 0x7F
    return framed[2 + {126: 2, 127: 8}.get(marker, 0) :]


def _ignore_result(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
        task.result()
