"""The end of a client's WebSocket: the close handshake, begun by either side, within :data:`CLOSE_TIMEOUT`.

Without compression the gateway speaks RFC 6455 on the raw transport itself: its close frame
waits for the client's answer, a client's close frame is answered, and the TCP connection ends
after. With compression aiohttp's ``WebSocketResponse`` closes. Either way a client that does
not let the close through in time has its TCP connection aborted, so a close never waits longer.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway import wsframes as wf

CLOSE_TIMEOUT = 5.0


class CloseHandshake:
    """The close of one connection, made when either side begins it: an open connection holds none."""

    __slots__ = ("_answered", "_transport", "_ws", "first", "sent")

    def __init__(self, transport: asyncio.Transport, ws: web.WebSocketResponse | None) -> None:
        self._transport = transport
        self._ws = ws  # aiohttp's, with compression; None on the raw transport
        self.first: asyncio.Task[None] | None = None  # the first close this side began
        self.sent = False  # a close frame went out on the raw transport: no frame may follow it
        self._answered: asyncio.Future[None] | None = None  # this side's close waits on the client's

    def begin(self, code: int, message: str, reader: wf.FrameReader | None) -> asyncio.Task[None]:
        """Close with ``code``; abort the TCP connection if the close cannot be written in time.

        ``reader`` reads the client's frames (None for none): once it is done, the client's
        answer can only show as the end of its stream.
        """
        task = asyncio.get_running_loop().create_task(self._close(code, message, reader))
        if self.first is None:
            self.first = task
        return task

    async def _close(self, code: int, message: str, reader: wf.FrameReader | None) -> None:
        transport = self._transport
        if self._ws is not None:
            try:
                await asyncio.wait_for(self._ws.close(code=code, message=message.encode()), CLOSE_TIMEOUT)
            except (TimeoutError, ConnectionError, RuntimeError):
                transport.abort()
            return
        if self.sent or transport.is_closing():
            return
        self.sent = True
        self._answered = asyncio.get_running_loop().create_future()
        transport.write(wf.close_frame(code, message))
        if reader is None or reader.done:
            transport.write_eof()
        try:
            await asyncio.wait_for(asyncio.shield(self._answered), CLOSE_TIMEOUT)
        except TimeoutError:
            transport.abort()
            return
        transport.close()

    def answer(self, code: int) -> None:
        """The client sent its close: answer it (unless this side began) and end the TCP connection."""
        if not self.sent:
            self.sent = True
            self._transport.write(wf.close_frame(None if code == wf.CLOSE_NO_STATUS else code))
        self.ended()
        self._transport.close()

    def ended(self) -> None:
        """The TCP connection is gone: a close this side began waits no more."""
        if self._answered is not None and not self._answered.done():
            self._answered.set_result(None)
