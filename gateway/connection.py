"""One client connection: its session's effects carried out on a socket.

The :class:`~gateway.session.Session` decides; the connection writes, closes, keeps the one
timer and hands the effects that need the broker to the :class:`~gateway.carrier.Carrier`,
feeding their answers back to the session until nothing is left to do.

Room events arrive already framed (see :mod:`gateway.wire`) and are written straight to the
socket's transport: no task, queue or copy per member. The transport's own buffer is the
outbox; when a client falls more than ``outbox_max_bytes`` behind, it is closed with 4008 and
recovers with ``since``. With compression on, frames go through aiohttp's writer instead,
because permessage-deflate needs per-connection state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from gateway import effects as fx
from gateway import events as ev
from gateway.session import Session
from gateway.wire import text_frame

if TYPE_CHECKING:
    from gateway.carrier import Carrier

log = logging.getLogger(__name__)
CLOSE_TIMEOUT = 5.0


class Connection:
    """One WebSocket on this node and the session it carries out."""

    __slots__ = (
        "_carrier",
        "_closing_task",
        "_on_slow",
        "_timer",
        "close_reason",
        "closing",
        "compress",
        "max_buffer",
        "session",
        "transport",
        "user",
        "ws",
    )

    def __init__(
        self,
        session: Session,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        carrier: Carrier,
        *,
        max_buffer: int,
        compress: bool,
        on_slow: Callable[[Connection], None],
    ) -> None:
        self.session = session
        self.user = session.user  # cached: compared for every delivered event
        self.ws = ws
        self.transport = transport
        self.max_buffer = max_buffer
        self.compress = compress
        self.closing = False
        self.close_reason = ""  # set by whoever closes first; the session's own reason otherwise
        self._carrier = carrier
        self._on_slow = on_slow
        self._timer: asyncio.TimerHandle | None = None
        self._closing_task: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.session.id

    async def feed(self, event: ev.Event) -> None:
        """Hand ``event`` to the session and carry out every effect, answers included, in order."""
        todo = deque(self.session.handle(event, time.time()))
        while todo:
            effect = todo.popleft()
            if not self._carry_out_here(effect):
                answer = await self._carrier.run(self, effect)
                if answer is not None:
                    # an answer's effects come before the ones already waiting: they follow from it
                    todo.extendleft(reversed(self.session.handle(answer, time.time())))

    async def closed(self) -> None:
        """The socket is gone: let go of the session's rooms, all at once."""
        self.cancel_timer()
        leaving = self.session.handle(ev.Closed(), time.time())
        await asyncio.gather(*(self._carrier.run(self, effect) for effect in leaving))

    def _carry_out_here(self, effect: fx.Effect) -> bool:
        """The effects that need only this socket; False for those the carrier runs."""
        match effect:
            case fx.Send(frame=frame):
                self.send(frame)
            case fx.Write(framed=framed):
                self.write(framed)
            case fx.Close(code=code, reason=reason):
                self.close(code, reason, self.session.close_reason)
            case fx.Count():
                self._carrier.count(effect)
            case fx.Schedule(at=at):
                self._schedule(at)
            case _:
                return False
        return True

    def _schedule(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, at - time.time()), self._deadline_reached)

    def _deadline_reached(self) -> None:
        self._timer = None
        if not self.closing:
            # the session answers a deadline with frames, a close or a new deadline: nothing to wait on
            for effect in self.session.handle(ev.DeadlineReached(), time.time()):
                self._carry_out_here(effect)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the socket --------------------------------------------------------------------------
    def send(self, frame: bytes) -> None:
        """Send one server frame (JSON bytes) to this client."""
        if self.compress:
            self._send_compressed(frame)
        else:
            self.write(text_frame(frame))

    def write(self, framed: bytes) -> None:
        """Write an already framed event; close the client if it is too far behind."""
        if self.closing or self.transport.is_closing():
            return
        if self.compress:
            # framed bytes cannot be compressed as they are: strip the header and send the payload
            self._send_compressed(_payload(framed))
            return
        self.transport.write(framed)
        if self.transport.get_write_buffer_size() > self.max_buffer:
            self._on_slow(self)

    def _send_compressed(self, frame: bytes) -> None:
        if self.closing or self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size() > self.max_buffer:
            self._on_slow(self)
            return
        task = asyncio.get_running_loop().create_task(self.ws.send_frame(frame, WSMsgType.TEXT))
        task.add_done_callback(_ignore_result)

    def close(self, code: int, message: str = "", reason: str = "") -> asyncio.Task[None]:
        """Close with ``code``; abort the TCP connection if the close cannot be written in time.

        ``reason`` is the label the end of the connection is counted under.
        """
        self.closing = True
        if reason and not self.close_reason:
            self.close_reason = reason
        task = asyncio.get_running_loop().create_task(self._close(code, message))
        if self._closing_task is None:
            self._closing_task = task
        return task

    async def wait_closed(self) -> None:
        """Until the close this side started has been written (or the socket aborted)."""
        if self._closing_task is not None:
            await asyncio.shield(self._closing_task)

    async def _close(self, code: int, message: str) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=message.encode()), CLOSE_TIMEOUT)
        except (TimeoutError, ConnectionError, RuntimeError):
            self.transport.abort()


def _payload(framed: bytes) -> bytes:
    marker = framed[1] & 0x7F
    return framed[2 + {126: 2, 127: 8}.get(marker, 0) :]


def _ignore_result(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
        task.result()
