"""The gateway's own WebSocket framing against RFC 6455, driven by the websockets library and raw sockets."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import re
import struct
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import websockets
from aiohttp.web_protocol import RequestHandler
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from tests.conftest import make_token
from tests.nodes import Cluster
from tests.procs import scaled


@pytest.fixture
async def cluster(redis_prefix: str) -> AsyncIterator[Cluster]:
    cluster = Cluster("memory", "", redis_prefix)
    try:
        yield cluster
    finally:
        await cluster.close()


async def node(cluster: Cluster, **settings: Any) -> str:
    return (await cluster.node(max_frame_bytes=1024, **settings)).replace("http://", "ws://")


async def connect(url: str, user: str = "alice", **claims: Any) -> ClientConnection:
    """A websockets client past the welcome frame (keepalive off: the test decides what is sent)."""
    ws = await websockets.connect(f"{url}/ws?token={make_token(user, **claims)}", ping_interval=None, compression=None)
    assert orjson.loads(await asyncio.wait_for(ws.recv(), scaled(5)))["type"] == "welcome"
    return ws


def raw(opcode: Opcode, data: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=mask, extensions=[])


async def answer(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), scaled(5)))
        if frame["type"] == kind or frame["type"] == "error":
            return frame


async def closed_with(ws: ClientConnection) -> int:
    """The code of the server's close frame, once the connection is over."""

    async def read_all() -> None:
        while True:
            await asyncio.wait_for(ws.recv(), scaled(5))

    with pytest.raises(ConnectionClosed):
        await read_all()
    await asyncio.wait_for(ws.wait_closed(), scaled(5))
    assert ws.protocol.close_rcvd is not None, "the server closed without a close frame"
    return ws.protocol.close_rcvd.code


async def closed_count(http: str, cluster: Cluster, reason: str) -> float:
    async with cluster.session.get(f"{http}/metrics") as response:
        text = await response.text()
    match = re.search(rf'chat_connections_closed_total{{reason="{reason}"}} ([0-9.e+]+)', text)
    return float(match.group(1)) if match else 0.0


async def test_a_fragmented_message_is_one_frame_to_the_session(cluster: Cluster) -> None:
    """A message sent in fragments is read as one client frame."""
    ws = await connect(await node(cluster))
    await ws.send(['{"type": "pi', 'ng", "ref": "fr', 'agments"}'])
    assert (await answer(ws, "pong"))["ref"] == "fragments"
    await ws.close()


async def test_control_frames_inside_a_fragmented_message_are_answered(cluster: Cluster) -> None:
    """A ping between the fragments of a message gets its pong, and the message still arrives whole."""
    ws = await connect(await node(cluster))
    ws.transport.write(raw(Opcode.TEXT, b'{"type": "ping",', fin=False))
    pong = await ws.ping(b"between")
    ws.transport.write(raw(Opcode.PONG, b"unsolicited"))
    ws.transport.write(raw(Opcode.CONT, b' "ref": "whole"}'))
    await asyncio.wait_for(pong, scaled(5))
    assert (await answer(ws, "pong"))["ref"] == "whole"
    await ws.close()


async def test_a_client_close_is_answered_with_its_code_and_the_server_ends_tcp(cluster: Cluster) -> None:
    """The server echoes the client's close code, closes the TCP connection, and counts it as client."""
    http = await cluster.node()
    url = http.replace("http://", "ws://")
    before = await closed_count(http, cluster, "client")
    ws = await connect(url)
    await asyncio.wait_for(ws.close(4321, "leaving"), scaled(5))
    assert ws.protocol.close_rcvd is not None
    assert ws.protocol.close_rcvd.code == 4321
    deadline = asyncio.get_running_loop().time() + scaled(5)
    while await closed_count(http, cluster, "client") == before:
        assert asyncio.get_running_loop().time() < deadline, "the close was not counted"
        await asyncio.sleep(0.01)


async def test_a_close_without_a_code_is_answered_without_one(cluster: Cluster) -> None:
    """An empty close frame (1005) is answered with an empty close frame."""
    ws = await connect(await node(cluster))
    ws.transport.write(raw(Opcode.CLOSE, b""))
    assert await closed_with(ws) == 1005


@pytest.mark.parametrize(
    "frames",
    [
        [raw(Opcode.TEXT, b'{"type": "ping"}', mask=False)],
        [bytes([0xC1]) + raw(Opcode.TEXT, b"{}")[1:]],  # RSV1 without an extension
        [bytes([0xA1]) + raw(Opcode.TEXT, b"{}")[1:]],  # RSV2
        [bytes([0x83]) + raw(Opcode.TEXT, b"{}")[1:]],  # reserved data opcode
        [bytes([0x8C]) + raw(Opcode.PING, b"")[1:]],  # reserved control opcode
        [bytes([0x09]) + raw(Opcode.PING, b"")[1:]],  # fragmented ping
        [raw(Opcode.CONT, b"{}")],  # nothing to continue
        [raw(Opcode.TEXT, b"{", fin=False), raw(Opcode.TEXT, b"}")],  # a new message inside one
        [raw(Opcode.CLOSE, struct.pack("!H", 1006))],  # a code that may not be sent
    ],
)
async def test_protocol_errors_close_with_1002(cluster: Cluster, frames: list[bytes]) -> None:
    """Unmasked frames, reserved bits and opcodes and misplaced frames close with 1002."""
    ws = await connect(await node(cluster))
    for frame in frames:
        ws.transport.write(frame)
    assert await closed_with(ws) == 1002


@pytest.mark.parametrize(
    "frames",
    [
        [raw(Opcode.TEXT, b'{"type": "ping", "ref": "\xff"}')],
        [raw(Opcode.TEXT, b'{"type": "ping", "ref": "\xe2', fin=False), raw(Opcode.CONT, b'\x28"}')],
        [raw(Opcode.TEXT, b'{"type": "ping", "ref": "\xe2', fin=False), raw(Opcode.CONT, b"\x82")],
    ],
)
async def test_invalid_utf8_closes_with_1007(cluster: Cluster, frames: list[bytes]) -> None:
    """Text that is not UTF-8 closes with 1007, also when the bad sequence spans fragments."""
    ws = await connect(await node(cluster))
    for frame in frames:
        ws.transport.write(frame)
    assert await closed_with(ws) == 1007


async def test_utf8_split_across_fragments_is_accepted(cluster: Cluster) -> None:
    """A character split over two fragments is a valid message."""
    ws = await connect(await node(cluster))
    euro = "€".encode()
    ws.transport.write(raw(Opcode.TEXT, b'{"type": "ping", "ref": "' + euro[:2], fin=False))
    ws.transport.write(raw(Opcode.CONT, euro[2:] + b'"}'))
    assert (await answer(ws, "pong"))["ref"] == "€"
    await ws.close()


async def test_a_message_over_the_limit_closes_with_1009_and_counts_too_large(cluster: Cluster) -> None:
    """A message past CHAT_MAX_FRAME_BYTES, whole or in fragments, closes with 1009 (too_large)."""
    http = await cluster.node(max_frame_bytes=1024)
    url = http.replace("http://", "ws://")
    ws = await connect(url)
    await ws.send('{"type": "ping", "pad": "' + "x" * 2000 + '"}')
    assert await closed_with(ws) == 1009
    ws = await connect(url)
    await ws.send(["x" * 600, "x" * 600])
    assert await closed_with(ws) == 1009
    assert await closed_count(http, cluster, "too_large") == 2


async def test_binary_frames_close_with_1003_after_a_close_handshake(cluster: Cluster) -> None:
    """A binary message closes with 1003; the server waits for the client's close, then ends TCP."""
    ws = await connect(await node(cluster))
    await ws.send(b"\x00\x01")
    assert await closed_with(ws) == 1003
    assert ws.protocol.close_sent is not None
    assert ws.protocol.close_sent.code == 1003


async def test_token_expiry_closes_with_4001(cluster: Cluster) -> None:
    """A token that runs out on an open connection closes it with 4001."""
    ws = await connect(await node(cluster, jwt_leeway=0), ttl=1)
    assert await closed_with(ws) == 4001


# -- raw sockets: what the websockets library would not do -----------------------------------
async def raw_connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("ws://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws?token={make_token('alice')} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(5))
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


async def server_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await asyncio.wait_for(reader.readexactly(2), scaled(5))
    assert not second & 0x80, "server frames are not masked"
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return first, await reader.readexactly(length)


async def test_a_client_that_does_not_answer_pings_is_dropped(cluster: Cluster) -> None:
    """The heartbeat pings a silent client; one that never answers is disconnected."""
    reader, writer = await raw_connect(await node(cluster, heartbeat=1))
    frames = [await server_frame(reader)]  # welcome
    while frames[-1][0] != 0x89:
        frames.append(await server_frame(reader))
    assert frames[-1] == (0x89, b"")
    assert await asyncio.wait_for(reader.read(), scaled(5)) == b""  # then the server lets go
    writer.close()


async def test_a_client_answering_pings_stays_connected(cluster: Cluster) -> None:
    """A client that answers the heartbeat's pings is kept for as many as it answers."""
    reader, writer = await raw_connect(await node(cluster, heartbeat=1))
    await server_frame(reader)  # welcome
    for _ in range(3):
        first, _payload = await server_frame(reader)
        assert first == 0x89
        writer.write(raw(Opcode.PONG, b""))
    writer.write(raw(Opcode.TEXT, b'{"type": "ping", "ref": "alive"}'))
    first, payload = await server_frame(reader)
    assert first == 0x81
    assert orjson.loads(payload) == {"type": "pong", "ref": "alive"}
    writer.close()


async def test_idle_connections_keep_no_task_and_no_aiohttp_handler(cluster: Cluster) -> None:
    """After the upgrade aiohttp forgets the connection: no task or request handler per idle client."""
    url = await node(cluster)
    server = cluster.servers[-1]
    sockets = [await raw_connect(url) for _ in range(20)]
    for reader, writer in sockets:
        await server_frame(reader)  # welcome
        writer.write(raw(Opcode.TEXT, b'{"type": "ping"}'))
        await server_frame(reader)  # pong
    gc.collect()
    assert server.runner is not None
    assert server.runner.server is not None
    assert server.runner.server.connections == []
    assert sum(isinstance(o, RequestHandler) for o in gc.get_objects()) <= 1  # at most the metrics scrape's
    assert len(asyncio.all_tasks()) < 20
    for _reader, writer in sockets:
        writer.close()
