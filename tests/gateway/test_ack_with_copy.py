"""The sender's ack and its copy of the message share one socket write, and the ack is never held long.

A node built as ``create_app`` builds it (in-memory broker), one connection on a real socket pair:
what the client side reads shows exactly which frames went out in which write.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from gateway import effects as fx
from gateway import events as ev
from gateway.auth import TokenVerifier
from gateway.connection import Connection
from gateway.metrics import GatewayMetrics
from gateway.node import Node
from gateway.outbox import ACK_WAIT
from gateway.principal import Principal
from gateway.wire import text_frame
from shared import server_frames as sf
from shared.broker import make_broker
from shared.packets import Packet
from shared.settings import Settings
from tests.procs import TEST_SECRET

ROOM = "b0123"


@dataclass
class Wired:
    node: Node
    connection: Connection
    client: socket.socket

    async def read(self, timeout: float = 5) -> bytes:
        """The bytes of what the server wrote (one write's worth when it wrote once)."""
        return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.client, 65536), timeout)

    async def stored(self, message_id: str, *, duplicate: bool = False) -> bytes:
        """The session hears its message was stored; returns the ack it answers with."""
        await self.connection.feed(ev.Stored(fx.Append(ROOM, b"", "r"), message_id, 1, False, duplicate=duplicate))
        return text_frame(sf.encode(sf.Ack(message_id, 1, False, "r")))

    def copy(self, message_id: str) -> bytes:
        """The room's copy of ``message_id`` arrives from the fan-out; returns it as written."""
        frame = b'{"type":"message","room":"%s","id":"%s","text":"hi"}' % (ROOM.encode(), message_id.encode())
        self.node.hub.deliver(ROOM, Packet(message_id, "", frame))
        return text_frame(frame)


@pytest.fixture
async def wired() -> AsyncIterator[Wired]:
    settings = Settings(jwt_secret=TEST_SECRET)
    node = Node(settings, make_broker(settings), TokenVerifier(settings), GatewayMetrics())
    server, client = socket.socketpair()
    client.setblocking(False)
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, server)
    principal = Principal("alice", None, frozenset(), time.time() + 3600)
    connection = node.open(principal, None, transport)  # type: ignore[arg-type]
    connection.take_over(node.sweep, settings.max_frame_bytes)
    await node.hub.add(ROOM, connection)
    yield Wired(node, connection, client)
    transport.close()
    client.close()
    node.hub.close()


async def test_the_ack_waits_for_the_copy_and_follows_it_in_the_same_write(wired: Wired) -> None:
    ack = await wired.stored("5-0")
    assert wired.connection.held_acks is not None
    copy = wired.copy("5-0")
    assert await wired.read() == copy + ack
    assert wired.connection.held_acks is None


async def test_an_ack_whose_copy_went_out_first_is_sent_at_once(wired: Wired) -> None:
    copy = wired.copy("6-0")
    assert await wired.read() == copy
    ack = await wired.stored("6-0")
    assert wired.connection.held_acks is None
    assert await wired.read() == ack


async def test_an_ack_whose_copy_does_not_come_goes_out_alone_soon(wired: Wired) -> None:
    ack = await wired.stored("7-0")
    assert await wired.read(timeout=ACK_WAIT * 40) == ack
    assert wired.connection.held_acks is None
    copy = wired.copy("7-0")  # a copy coming late is still delivered, on its own
    assert await wired.read() == copy


async def test_other_copies_pass_a_held_ack_by(wired: Wired) -> None:
    ack = await wired.stored("9-0")
    other = wired.copy("8-0")
    assert await wired.read() == other
    assert wired.connection.held_acks is not None
    copy = wired.copy("9-0")
    assert await wired.read() == copy + ack


async def test_a_duplicate_has_no_copy_and_its_ack_is_not_held(wired: Wired) -> None:
    ack = await wired.stored("10-0", duplicate=True)
    assert wired.connection.held_acks is None
    assert await wired.read() == ack


async def test_a_held_ack_goes_out_before_the_answer_to_a_later_frame(wired: Wired) -> None:
    ack = await wired.stored("11-0")
    await wired.connection.feed(ev.Received('{"type":"ping","ref":"p"}'))
    pong = text_frame(sf.encode(sf.Pong("p")))
    assert await wired.read() == ack + pong
    assert wired.connection.held_acks is None
