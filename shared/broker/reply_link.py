"""A Redis connection read by hiredis as the bytes arrive: the command pipe's socket.

The pipe sends a batch of packed commands in one write and waits for all their replies. Read
through redis-py, every reply is a coroutine chain with a timeout context and a future of the
stream reader, which in small rooms costs more than the command itself. Here the transport's
bytes go straight into a ``hiredis.Reader`` in ``data_received``, and the batch's one future is
resolved when its last reply is in: no task, no per-reply await.

The connection is opened (and authenticated, and found through Sentinel) by redis-py; this
protocol takes over its transport afterwards (see ``redis_compat.BatchConnection``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis

_MORE = object()  # hiredis's answer when a reply is not complete yet


class LinkLost(ConnectionError):
    """The connection closed (or broke) with replies still owed."""


class ReplyLink(asyncio.Protocol):
    """Replies of one connection, matched in order to the batches sent on it."""

    def __init__(
        self,
        transport: asyncio.Transport,
        reply_error: Callable[[str], Exception],
        protocol_error: type[Exception],
    ) -> None:
        self._transport = transport
        self._reader = hiredis.Reader(protocolError=protocol_error, replyError=reply_error, notEnoughData=_MORE)
        # each batch sent and not fully answered: how many replies it waits for, those in, its future
        self._waiting: deque[tuple[int, list[Any], asyncio.Future[list[Any]]]] = deque()
        self._lost: Exception | None = None
        # the opener's protocol still hears of the end, so that its close() does not wait for it
        self._previous = transport.get_protocol()
        transport.set_protocol(self)

    def send(self, packed: bytes, count: int) -> asyncio.Future[list[Any]]:
        """Write ``count`` packed commands; the future gets their replies (errors as exceptions) in order."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if count == 0:
            future.set_result([])
            return future
        if self._lost is not None:
            future.set_exception(LinkLost(f"the Redis connection is gone: {self._lost}"))
            return future
        self._waiting.append((count, [], future))
        self._transport.write(packed)
        return future

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        while waiting:
            try:
                reply = self._reader.gets()
            except Exception as exc:  # the stream is out of step: nothing after this can be trusted
                self._fail(exc)
                self._transport.close()
                return
            if reply is _MORE:
                return
            count, replies, future = waiting[0]
            replies.append(reply)
            if len(replies) == count:
                waiting.popleft()
                if not future.done():  # its caller may have been cancelled
                    future.set_result(replies)
        if self._reader.has_data():  # a reply nobody asked for: the link is out of step
            self._fail(LinkLost("Redis sent a reply no command was waiting for"))
            self._transport.close()

    def eof_received(self) -> bool | None:
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or LinkLost("closed"))
        self._previous.connection_lost(exc)

    def _fail(self, exc: Exception) -> None:
        if self._lost is None:
            self._lost = exc
        while self._waiting:
            _, _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(LinkLost(f"the Redis connection was lost: {exc}"))

    @property
    def usable(self) -> bool:
        return self._lost is None and not self._transport.is_closing()

    def close(self) -> None:
        self._transport.close()
