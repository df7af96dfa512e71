"""One client connection: its session's effects carried out on a socket.

The :class:`~gateway.session.Session` decides; the connection writes (it is an
:class:`~gateway.outbox.Outbox`), closes (:mod:`gateway.closing`), keeps the one timer and hands
the effects that need the broker to the :class:`~gateway.carrier.Carrier`, feeding their answers
back to the session until nothing is left to do.

Without compression the connection is also the transport's protocol (see :meth:`take_over`):
client frames are read by a :class:`~gateway.wsframes.FrameReader` as the bytes arrive, and the
node's :class:`~gateway.heartbeat.Sweep` pings it and times its token. An idle connection is
then a transport, this object, its reader and its session: no task, no timer, no aiohttp
objects. Events the session cannot answer at once (those that need the broker) are carried out
in a task that lives only until they and the frames that came meanwhile are done.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from gateway import effects as fx
from gateway import events as ev
from gateway import wsframes as wf
from gateway.closing import CloseHandshake
from gateway.heartbeat import NOT_WATCHED
from gateway.outbox import Outbox
from gateway.session import Session
from shared.errors import CloseCode

if TYPE_CHECKING:
    from gateway.carrier import Carrier
    from gateway.heartbeat import Sweep

log = logging.getLogger(__name__)
INBOX_PAUSE = 64  # client frames waiting on an answer from the broker before reading pauses
_PING = wf.control_frame(wf.OP_PING)


class Connection(Outbox, asyncio.Protocol):
    """One WebSocket on this node and the session it carries out."""

    __slots__ = (
        "_carrier",
        "_handshake",
        "_inbox",
        "_on_slow",
        "_reader",
        "_sweep",
        "_task",
        "_timer",
        "close_reason",
        "deadline",
        "idle",
        "session",
        "user",
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
        super().__init__(ws, transport, max_buffer=max_buffer, compress=compress)
        self.session = session
        self.user = session.user  # cached: compared for every delivered event
        self.close_reason = ""  # set by whoever closes first; the session's own reason otherwise
        self._carrier = carrier
        self._on_slow = on_slow
        self._timer: asyncio.TimerHandle | None = None  # the token deadline when no sweep times it
        self._handshake: CloseHandshake | None = None  # once either side begins to close
        # the socket side when this object is the transport's protocol (see take_over)
        self._reader: wf.FrameReader | None = None
        self._sweep: Sweep | None = None
        self.idle = NOT_WATCHED  # sweeps since the client last sent a byte
        self.deadline = math.inf  # when the token expires, for the sweep
        self._inbox: deque[ev.Event] | None = None  # events waiting while a task carries out earlier ones
        self._task: asyncio.Task[None] | None = None  # that task, kept until it ends

    @property
    def id(self) -> str:
        return self.session.id

    async def feed(self, event: ev.Event) -> None:
        """Hand ``event`` to the session and carry out every effect, answers included, in order."""
        await self._carry_out(deque(self.session.handle(event, time.time())))

    async def _carry_out(self, todo: deque[fx.Effect]) -> None:
        """Every effect in ``todo``, the broker's answers fed back to the session as they come."""
        while not self._carry_out_now(todo):
            answer = await self._carrier.run(self, todo.popleft())
            if answer is not None:
                # an answer's effects come before the ones already waiting: they follow from it
                todo.extendleft(reversed(self.session.handle(answer, time.time())))

    def _carry_out_now(self, todo: deque[fx.Effect]) -> bool:
        """Carry out the head of ``todo`` that needs only this socket, in one write; False if the broker is needed."""
        self.cork()
        while todo:
            if not self._carry_out_here(todo[0]):
                self.uncork()
                return False
            todo.popleft()
        self.uncork()
        return True

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
            case fx.SendWithCopy(frame=frame, room=room, message_id=message_id):
                if self._carrier.delivered(room, message_id):
                    self.send(frame)  # the copy went out first: nothing to wait for
                else:
                    self.hold_ack(frame, message_id)
            case fx.Write(framed=framed):
                self.write(framed)
            case fx.Close(code=code, reason=reason):
                self.uncork()  # what was said before the close goes out before it
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

    def fell_behind(self) -> None:
        self._on_slow(self)

    # -- closing -----------------------------------------------------------------------------
    def close(self, code: int, message: str = "", reason: str = "") -> asyncio.Task[None]:
        """Close with ``code`` (see :meth:`CloseHandshake.begin`), counted under the label ``reason``."""
        self.closing = True
        if reason and not self.close_reason:
            self.close_reason = reason
        return self._close_handshake().begin(code, message, self._reader)

    async def wait_closed(self) -> None:
        """Until the close this side started has been written (or the socket aborted)."""
        if self._handshake is not None and self._handshake.first is not None:
            await asyncio.shield(self._handshake.first)

    def _close_handshake(self) -> CloseHandshake:
        if self._handshake is None:
            self._handshake = CloseHandshake(self.transport, self.ws)
        return self._handshake

    def ended_reason(self) -> str:
        """The label the end of this connection is counted under."""
        return self.close_reason or self.session.close_reason

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

    def start(self, preface: bytes = b"") -> None:
        """Welcome the client after ``preface`` (the 101 answer), in one write: a storm is made of these."""
        self.cork()
        if preface:
            self.write(preface)
        self._handle(ev.Opened())  # carried out now (nothing to ask the broker), uncorking both

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
                    if self._handshake is None or not self._handshake.sent:  # nothing may follow a close
                        self.transport.write(wf.control_frame(wf.OP_PONG, payload))
                case wf.Pong():
                    pass
                case wf.Binary():
                    if not self.closing:
                        self._handle(ev.ReceivedBinary())
                case wf.Close(code=code):
                    self.closing = True
                    self._close_handshake().answer(code)
                case wf.Fail(code=code, reason=reason):
                    self._fail(code, reason)

    def eof_received(self) -> bool | None:
        return None  # the peer is done sending: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.drop_acks()
        if self._handshake is not None:
            self._handshake.ended()
        self.closing = True
        self._reader = None
        sweep = self._sweep
        if sweep is not None:
            sweep.discard(self)
            sweep.spawn(sweep.ended(self, self.ended_reason()))

    def ping(self) -> None:
        if not self.closing and not self.transport.is_closing():
            self.transport.write(_PING)

    def unresponsive(self) -> None:
        """No pong in time: the client or the network is gone."""
        log.info("closing unresponsive client", extra={"session": self.id})
        self.closing = True
        self.transport.abort()

    def _fail(self, code: int, reason: str) -> None:
        """The client broke the protocol: close with ``code``, read nothing more from it."""
        if code == wf.CLOSE_TOO_BIG and not self.close_reason:
            self.close_reason = "too_large"
        log.info("closing a client that broke the protocol: %s", reason, extra={"session": self.id})
        self.close(code, reason)

    def _handle(self, event: ev.Event) -> None:
        """Hand ``event`` to the session; carry its effects out now if none needs the broker."""
        if self._inbox is not None:
            self._inbox.append(event)
            if len(self._inbox) == INBOX_PAUSE:
                self.transport.pause_reading()
            return
        todo = deque(self.session.handle(event, time.time()))
        if not self._carry_out_now(todo):
            # the rest waits for the broker; frames that arrive meanwhile wait for it too
            self._inbox = deque()
            self._task = asyncio.get_running_loop().create_task(self._carry_on(todo))

    async def _carry_on(self, todo: deque[fx.Effect]) -> None:
        """``todo`` (its first effect needs the broker), then the events that waited for it, in order."""
        try:
            await self._carry_out(todo)
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
