"""One client connection: its session's effects carried out on a socket.

The :class:`~gateway.session.Session` decides; the connection writes, closes, keeps the one
timer and hands the effects that need the broker to the :class:`~gateway.carrier.Carrier`,
feeding their answers back to the session until nothing is left to do.

Room events arrive already framed (see :mod:`gateway.wire`) and are written straight to the
socket's transport: no task, queue or copy per member. The transport's own buffer is the
outbox; when a client falls more than ``outbox_max_bytes`` behind, it is closed with 4008 and
recovers with ``since``. With compression on, frames go through aiohttp's writer instead,
because permessage-deflate needs per-connection state.

Without compression the connection is also the transport's protocol (see :meth:`take_over`):
client frames are read by a :class:`~gateway.wsframes.FrameReader` as the bytes arrive, and the
node's :class:`~gateway.heartbeat.Sweep` pings it and times its token. An idle connection is
then a transport, this object, its reader and its session: no task, no timer, no aiohttp
objects. Events the session cannot answer at once (those that need the broker) are carried out
in a task that lives only until they and the frames that came meanwhile are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from gateway import effects as fx
from gateway import events as ev
from gateway import wsframes as wf
from gateway.heartbeat import NOT_WATCHED
from gateway.session import Session
from gateway.wire import text_frame
from shared.errors import CloseCode

if TYPE_CHECKING:
    from gateway.carrier import Carrier
    from gateway.heartbeat import Sweep

log = logging.getLogger(__name__)
CLOSE_TIMEOUT = 5.0
INBOX_PAUSE = 64  # client frames waiting on an answer from the broker before reading pauses
_PING = wf.control_frame(wf.OP_PING)
# How long an ack waits for the room's copy of its message to share a write. The copy is one
# pub/sub hop behind the ack, usually well under a millisecond; a copy held up by a broker
# reconnect must not hold the ack up too.
ACK_WAIT = 0.05


class Connection(asyncio.Protocol):
    """One WebSocket on this node and the session it carries out."""

    __slots__ = (
        "_carrier",
        "_closing_task",
        "_corked",
        "_inbox",
        "_on_slow",
        "_peer_closed",
        "_reader",
        "_sent_close",
        "_sweep",
        "_task",
        "_timer",
        "close_reason",
        "closing",
        "compress",
        "deadline",
        "held_acks",
        "idle",
        "max_buffer",
        "session",
        "transport",
        "user",
        "ws",
    )

    def __init__(
        self,
        session: Session,
        ws: web.WebSocketResponse | None,
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
        self._timer: asyncio.TimerHandle | None = None  # the token deadline when no sweep times it
        self._closing_task: asyncio.Task[None] | None = None
        self._corked: list[bytes] | None = None  # frames gathered for one write (see _cork)
        # acks waiting for the room's copy of their message, by message id (see SendWithCopy);
        # None when there are none, which the hub checks for every delivery
        self.held_acks: dict[str, tuple[bytes, asyncio.TimerHandle]] | None = None
        # the socket side when this object is the transport's protocol (see take_over)
        self._reader: wf.FrameReader | None = None
        self._sweep: Sweep | None = None
        self.idle = NOT_WATCHED  # sweeps since the client last sent a byte
        self.deadline = math.inf  # when the token expires, for the sweep
        self._inbox: deque[ev.Event] | None = None  # events waiting while a task carries out earlier ones
        self._task: asyncio.Task[None] | None = None  # that task, kept until it ends
        self._sent_close = False
        self._peer_closed: asyncio.Future[None] | None = None  # a close this side started waits on it

    @property
    def id(self) -> str:
        return self.session.id

    async def feed(self, event: ev.Event) -> None:
        """Hand ``event`` to the session and carry out every effect, answers included, in order."""
        todo = deque(self.session.handle(event, time.time()))
        self._cork()
        while todo:
            effect = todo.popleft()
            if not self._carry_out_here(effect):
                self._uncork()
                answer = await self._carrier.run(self, effect)
                self._cork()
                if answer is not None:
                    # an answer's effects come before the ones already waiting: they follow from it
                    todo.extendleft(reversed(self.session.handle(answer, time.time())))
        self._uncork()

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
            case fx.SendWithCopy():
                self._send_with_copy(effect)
            case fx.Write(framed=framed):
                self.write(framed)
            case fx.Close(code=code, reason=reason):
                self._uncork()  # what was said before the close goes out before it
                self.close(code, reason, self.session.close_reason)
            case fx.Count():
                self._carrier.count(effect)
            case fx.SetTyping() | fx.Announce():
                self._carrier.signal(self, effect)
            case fx.Schedule(at=at):
                self._schedule(at)
            case _:
                return False
        return True

    def _schedule(self, at: float) -> None:
        if self._sweep is not None:
            self._sweep.schedule(self, at)
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, at - time.time()), self.deadline_reached)

    def deadline_reached(self) -> None:
        """The token's deadline has come (called by the sweep or the timer)."""
        self._timer = None
        if not self.closing:
            # the session answers a deadline with frames, a close or a new deadline: nothing to wait on
            for effect in self.session.handle(ev.DeadlineReached(), time.time()):
                self._carry_out_here(effect)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sweep is not None:
            self._sweep.discard(self)

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
        if self._corked is not None:
            self._corked.append(framed)
            return
        self.transport.write(framed)
        if self.transport.get_write_buffer_size() > self.max_buffer:
            self._on_slow(self)

    def _send_with_copy(self, effect: fx.SendWithCopy) -> None:
        if self.compress or self._carrier.delivered(effect.room, effect.message_id):
            self.send(effect.frame)
            return
        timer = asyncio.get_running_loop().call_later(ACK_WAIT, self._release_ack, effect.message_id)
        if self.held_acks is None:
            self.held_acks = {}
        self.held_acks[effect.message_id] = (text_frame(effect.frame), timer)

    def write_copy(self, framed: bytes, message_id: str) -> None:
        """Write a room event; an ack held for it (see :meth:`_send_with_copy`) goes in the same write."""
        held = self._take_ack(message_id)
        if held is None:
            self.write(framed)
            return
        ack, timer = held
        timer.cancel()
        self.write(framed + ack)

    def _release_ack(self, message_id: str) -> None:
        held = self._take_ack(message_id)
        if held is not None:
            self.write(held[0])

    def _take_ack(self, message_id: str) -> tuple[bytes, asyncio.TimerHandle] | None:
        if self.held_acks is None:
            return None
        held = self.held_acks.pop(message_id, None)
        if not self.held_acks:
            self.held_acks = None
        return held

    def _cork(self) -> None:
        """Gather the frames written from now on (the answers to one event) into one write."""
        if self._corked is None:
            self._corked = []

    def _uncork(self) -> None:
        corked, self._corked = self._corked, None
        if corked:
            self.write(corked[0] if len(corked) == 1 else b"".join(corked))

    def _send_compressed(self, frame: bytes) -> None:
        if self.closing or self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size() > self.max_buffer:
            self._on_slow(self)
            return
        assert self.ws is not None  # compression is aiohttp's
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
        if self.ws is None:
            await self._close_handshake(code, message)
            return
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=message.encode()), CLOSE_TIMEOUT)
        except (TimeoutError, ConnectionError, RuntimeError):
            self.transport.abort()

    # -- the transport's protocol (without compression) --------------------------------------
    def take_over(self, sweep: Sweep, max_size: int) -> None:
        """Become the transport's protocol: read its frames here and let ``sweep`` ping and time it.

        Call it right after the 101 answer was written, before anything else can run (a client
        sends nothing before it has read the 101, RFC 6455 §4.1). The end of the connection is
        then reported through ``sweep.ended``, in a task the node owns.
        """
        self._reader = wf.FrameReader(max_size)
        self._sweep = sweep
        self.idle = 0
        self.transport.set_protocol(self)
        sweep.add(self)
        if not self.transport.is_reading():
            self.transport.resume_reading()

    def start(self) -> None:
        """Welcome the client (the session's first frames)."""
        self._handle(ev.Opened())

    def data_received(self, data: bytes) -> None:
        self.idle = 0
        if self._reader is None:
            return
        for frame in self._reader.feed(data):
            match frame:
                case wf.Text(text=text):
                    if not self.closing:
                        self._handle(ev.Received(text))
                case wf.Ping(data=payload):
                    if not self._sent_close:
                        self.transport.write(wf.control_frame(wf.OP_PONG, payload))
                case wf.Pong():
                    pass
                case wf.Binary():
                    if not self.closing:
                        self._handle(ev.ReceivedBinary())
                case wf.Close(code=code):
                    self._peer_close(code)
                case wf.Fail(code=code, reason=reason):
                    self._fail(code, reason)

    def eof_received(self) -> bool | None:
        return None  # the peer is done sending: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        for _, timer in (self.held_acks or {}).values():
            timer.cancel()
        self.held_acks = None
        if self._peer_closed is not None and not self._peer_closed.done():
            self._peer_closed.set_result(None)
        self.closing = True
        self._reader = None
        sweep = self._sweep
        if sweep is not None:
            sweep.discard(self)
            sweep.spawn(sweep.ended(self, self.ended_reason()))

    def ended_reason(self) -> str:
        """The label the end of this connection is counted under."""
        return self.close_reason or self.session.close_reason

    def ping(self) -> None:
        if not self.closing and not self.transport.is_closing():
            self.transport.write(_PING)

    def unresponsive(self) -> None:
        """No pong in time: the client or the network is gone."""
        log.info("closing unresponsive client", extra={"session": self.id})
        self.closing = True
        self.transport.abort()

    def _handle(self, event: ev.Event) -> None:
        """Hand ``event`` to the session; carry its effects out now if none needs the broker."""
        if self._inbox is not None:
            self._inbox.append(event)
            if len(self._inbox) == INBOX_PAUSE:
                self.transport.pause_reading()
            return
        todo = deque(self.session.handle(event, time.time()))
        self._cork()
        while todo:
            effect = todo.popleft()
            if not self._carry_out_here(effect):
                self._uncork()
                # the rest waits for the broker; frames that arrive meanwhile wait for it too
                self._inbox = deque()
                self._task = asyncio.get_running_loop().create_task(self._carry_on(effect, todo))
                return
        self._uncork()

    async def _carry_on(self, effect: fx.Effect, todo: deque[fx.Effect]) -> None:
        try:
            await self._finish(effect, todo)
            while self._inbox:
                if len(self._inbox) == INBOX_PAUSE and not self.transport.is_closing():
                    self.transport.resume_reading()
                await self.feed(self._inbox.popleft())
        except Exception:
            log.exception("a client frame could not be carried out", extra={"session": self.id})
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._inbox = None
            self._task = None

    async def _finish(self, effect: fx.Effect, todo: deque[fx.Effect]) -> None:
        """``effect`` through the carrier, then what is left of ``todo``, answers included."""
        answer = await self._carrier.run(self, effect)
        if answer is not None:
            todo.extendleft(reversed(self.session.handle(answer, time.time())))
        self._cork()
        while todo:
            effect = todo.popleft()
            if not self._carry_out_here(effect):
                self._uncork()
                answer = await self._carrier.run(self, effect)
                self._cork()
                if answer is not None:
                    todo.extendleft(reversed(self.session.handle(answer, time.time())))
        self._uncork()

    def _peer_close(self, code: int) -> None:
        """The client sent its close: answer it (unless this side started) and end the connection."""
        if not self._sent_close:
            self.closing = True
            self._sent_close = True
            self.transport.write(wf.close_frame(None if code == wf.CLOSE_NO_STATUS else code))
        if self._peer_closed is not None and not self._peer_closed.done():
            self._peer_closed.set_result(None)
        self.transport.close()

    def _fail(self, code: int, reason: str) -> None:
        """The client broke the protocol: close with ``code``, read nothing more from it."""
        if code == wf.CLOSE_TOO_BIG and not self.close_reason:
            self.close_reason = "too_large"
        log.info("closing a client that broke the protocol: %s", reason, extra={"session": self.id})
        self.close(code, reason)

    async def _close_handshake(self, code: int, message: str) -> None:
        """Send a close frame; end the TCP connection once the client answered, or abort it."""
        transport = self.transport
        if self._sent_close or transport.is_closing():
            return
        self._sent_close = True
        self._peer_closed = asyncio.get_running_loop().create_future()
        transport.write(wf.close_frame(code, message))
        if self._reader is None or self._reader.done:
            # nothing more is read: the client's answer shows as the end of its stream
            transport.write_eof()
        try:
            await asyncio.wait_for(asyncio.shield(self._peer_closed), CLOSE_TIMEOUT)
        except TimeoutError:
            transport.abort()
            return
        transport.close()


def _payload(framed: bytes) -> bytes:
    marker = framed[1] & 0x7F
    return framed[2 + {126: 2, 127: 8}.get(marker, 0) :]


def _ignore_result(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
        task.result()
