"""A member that stops reading is cut off with 4008 while the node's memory stays flat and others lose nothing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import socket
import struct
import time
from collections.abc import Iterator

import aiohttp
import orjson
import pytest

from tests.chaos.conftest import GENEROUS_LIMITS, check_sequence, create_room, eventually, rss_mib
from tests.chaos.resilient import id_key
from tests.conftest import make_token
from tests.procs import GatewayNode, RedisServer, scaled

pytestmark = pytest.mark.slow
OUTBOX = 256 * 1024
RATE = 2000  # messages per second the sender aims at
SECONDS = 3.0
TEXT = "x" * 1000  # large enough that a few seconds overflow the kernel's socket buffers as well as the outbox
WINDOW = 200  # messages sent and not yet acknowledged
RSS_GROWTH_MAX = 50.0  # MiB


@pytest.fixture
def node(redis_server: RedisServer, redis_prefix: str) -> Iterator[GatewayNode]:
    env = {**GENEROUS_LIMITS, "CHAT_REDIS_PREFIX": redis_prefix, "CHAT_OUTBOX_MAX_BYTES": str(OUTBOX)}
    gateway = GatewayNode(redis_server.url, "slow", **env)
    yield gateway
    assert gateway.terminate() == 0, gateway.log()[-3000:]


def client_frame(payload: bytes) -> bytes:
    """A masked text frame, as a client must send it."""
    mask = os.urandom(4)
    size = len(payload)
    header = bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0x80 | 126]) + struct.pack("!H", size)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of every complete server frame in ``data``."""
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, size, at = data[at] & 0x0F, data[at + 1] & 0x7F, at + 2
        if size >= 126:
            width = 2 if size == 126 else 8
            if at + width > len(data):
                break
            size, at = int.from_bytes(data[at : at + width], "big"), at + width
        if at + size > len(data):
            break
        frames.append((opcode, data[at : at + size]))
        at += size
    return frames


def stalled_member(port: int, token: str, room: str) -> socket.socket:
    """A raw WebSocket with a tiny receive buffer that joins ``room`` and is never read again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(scaled(5))
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(request.encode())
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(4096)
    head, received = received.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.sendall(client_frame(orjson.dumps({"type": "join", "room": room, "ref": "j"})))
    while not any(b'"joined"' in payload for _, payload in parse_frames(received)):
        received += sock.recv(4096)
    return sock  # from here on nobody reads it


def drain_until_closed(sock: socket.socket, timeout: float) -> tuple[int | None, str]:
    """Read what is left until the server ends the connection; (close code if a close frame came, how it ended)."""
    sock.settimeout(0.5)
    data, deadline = b"", time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return close_code(data), "reset"
        if not chunk:
            return close_code(data), "eof"
        data += chunk
    raise TimeoutError("the stalled member's connection is still open")


def close_code(data: bytes) -> int | None:
    # the stream may start mid-frame when the server aborted: look for a close frame near the end
    tail = data[-256:]
    for at in range(len(tail) - 3):
        if tail[at] == 0x88 and 2 <= tail[at + 1] <= 125:
            return int.from_bytes(tail[at + 2 : at + 4], "big")
    return None


async def metric(http: aiohttp.ClientSession, url: str, pattern: str) -> float:
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    found = re.search(rf"^{pattern} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


class Reader:
    """A member reading every frame as it comes, recording the room's message ids."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids: list[str] = []
        self.acks: dict[str, str] = {}  # ref -> id, for the sender
        self.errors: list[dict] = []
        self.joined = False
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            frame = orjson.loads(message.data)
            kind = frame["type"]
            if kind == "message":
                self.ids.append(frame["id"])
            elif kind == "ack":
                self.acks[frame["ref"]] = frame["id"]
            elif kind == "joined":
                self.joined = True
            elif kind == "error":
                self.errors.append(frame)
            self.changed.set()

    async def until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + scaled(timeout)
        while not predicate():
            assert not self.task.done(), f"the connection ended while waiting for {what}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out waiting for {what}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))


async def join(http: aiohttp.ClientSession, url: str, user: str, room: str) -> Reader:
    ws = await http.ws_connect(f"{url}/ws?token={make_token(user)}", max_msg_size=0)
    reader = Reader(ws)
    await ws.send_str(orjson.dumps({"type": "join", "room": room, "ref": "join"}).decode())
    await reader.until(lambda: reader.joined or bool(reader.errors), 5, "joined")
    assert reader.errors == [], reader.errors
    return reader


async def blast(senders: list[Reader], room: str) -> tuple[list[str], float]:
    """Send RATE messages per second for SECONDS over all senders, each with WINDOW unacknowledged.

    Returns every acknowledged id in history order and the seconds taken. Several connections,
    because a node handles one connection's frames one after the other.
    """
    share = int(RATE * SECONDS) // len(senders)
    started = time.monotonic()

    async def send(sender: Reader, tag: int) -> list[str]:
        for n in range(share):
            await sender.until(lambda n=n: n - len(sender.acks) < WINDOW, 10, "acks within the window")
            frame = {"type": "message", "room": room, "text": f"{tag}.{n} {TEXT}", "ref": f"m{n}"}
            await sender.ws.send_str(orjson.dumps(frame).decode())
            if n % 50 == 49 and (pause := started + (n + 1) * len(senders) / RATE - time.monotonic()) > 0:
                await asyncio.sleep(pause)  # pacing the sender, not waiting for an event
        await sender.until(lambda: len(sender.acks) == share, 20, "every ack")
        return [sender.acks[f"m{n}"] for n in range(share)]

    acked = await asyncio.gather(*(send(sender, tag) for tag, sender in enumerate(senders)))
    elapsed = time.monotonic() - started
    return sorted((i for ids in acked for i in ids), key=id_key), elapsed


async def test_stalled_member_is_cut_off_while_memory_stays_flat(
    node: GatewayNode, http: aiohttp.ClientSession
) -> None:
    """A member that stops reading is closed (4008 or aborted), RSS stays flat and the other members get every message."""
    room = await create_room(http, node.url, "sender", ["reader1", "reader2", "stalled"])
    senders = [await join(http, node.url, "sender", room) for _ in range(2)]
    readers = [await join(http, node.url, user, room) for user in ("reader1", "reader2")]
    stalled = await asyncio.to_thread(stalled_member, node.port, make_token("stalled"), room)
    try:
        baseline = rss_mib(node.pid)
        samples = [baseline]
        sampling = True

        cut_at: list[float] = []
        started = time.monotonic()

        async def sample() -> None:
            while sampling:
                samples.append(rss_mib(node.pid))
                if not cut_at and await metric(http, node.url, "chat_slow_consumers_total") >= 1:
                    cut_at.append(time.monotonic() - started)
                await asyncio.sleep(0.1)  # a sampling interval, not a wait for an event

        sampler = asyncio.create_task(sample())
        try:
            sent, elapsed = await blast(senders, room)
            for reader in [*senders, *readers]:
                await reader.until(lambda r=reader: len(r.ids) >= len(sent), 30, "every message at a reader")
        finally:
            sampling = False
            await sampler

        async def cut_off() -> bool:
            return await metric(http, node.url, "chat_slow_consumers_total") >= 1

        await eventually(cut_off, 10, "the slow consumer counted")
        code, ending = await asyncio.to_thread(drain_until_closed, stalled, 20)
        closed_reason = await metric(http, node.url, 'chat_connections_closed_total{reason="slow_consumer"}')
    finally:
        stalled.close()
        for reader in [*senders, *readers]:
            await reader.ws.close()
    after = rss_mib(node.pid)
    peak = max(samples)
    print(
        f"\nslow consumer: sent {len(sent)} messages of {len(TEXT)} chars in {elapsed:.1f}s "
        f"({len(sent) / elapsed:.0f}/s); stalled member cut off after {cut_at[0] if cut_at else float('nan'):.1f}s, "
        f"ended by {ending}, close code {code}; "
        f"RSS baseline {baseline:.1f} MiB, peak {peak:.1f} MiB (+{peak - baseline:.1f}), after {after:.1f} MiB"
    )
    assert closed_reason == 1
    assert code in (4008, None)  # None: the server gave up writing the close frame and aborted the TCP connection
    assert peak - baseline < RSS_GROWTH_MAX
    for reader in [*senders, *readers]:
        assert reader.errors == []
        assert reader.ids == sent, "a reading member lost or reordered messages"
        assert check_sequence(reader.ids) == ([], [])
