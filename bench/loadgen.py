"""The load generator: processes holding many WebSocket clients, driven by the runner over pipes.

Each process runs uvloop and holds a share of the clients. The runner sends it commands (connect,
begin a step, send at a rate, report, disconnect) and gets one answer per command. Clients count
what they receive per step (see bench.stats); senders pace their messages on an absolute schedule,
so a slow server makes the process catch up in bursts rather than quietly send less.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import uvloop

from bench import rawws
from bench.procs import raise_fd_limit
from bench.stats import Histogram, Seen, StreamTally, Tally, count, marker, parse_marker
from bench.wire import ANSWER, MESSAGE, PIECE, REPLY, WIRES, Piece, Wire

CONNECT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Member:
    """One client to open: its global index (the sender id in markers), URL, room, and where to resume it."""

    index: int
    url: str
    room: str
    since: str | None = None  # the last message id the client holds (systems that resume by position)


@dataclass(eq=False, slots=True)
class Spelled:
    """A streamed reply as one client has it so far: its attempt, the last seq and the pieces' text."""

    attempt: int
    seq: int
    parts: list[str]


@dataclass(eq=False)
class Client:
    member: Member
    ws: rawws.RawWebSocket
    joined_ns: int
    seen: tuple[Seen, Seen] = field(default_factory=lambda: (Seen(), Seen()))  # messages, replies
    seq: int = 0
    streams: dict[str, Spelled] = field(default_factory=dict)  # reply_to -> the reply streaming to this client


class Generator:
    """The state of one load-generator process."""

    def __init__(self) -> None:
        self.wire: type[Wire] = Wire
        self.decoder: Wire = Wire()
        self.clients: list[Client] = []
        self.step = 0
        self.tallies = (Tally(), Tally())  # messages, replies in the current step
        self.stream = StreamTally()  # the streamed replies' pieces in the current step
        self.cpu_start = time.process_time()
        self.disconnected = 0
        self.frames = 0  # every text frame received in the current step, deliveries or not
        self.filler = ""  # what every sent text carries after its marker; a bot's echo must end with it

    async def connect(
        self, wire: str, members: list[Member], concurrency: int, filler: str, deadline: float | None = None
    ) -> dict[str, Any]:
        """Open and join ``members``, ``concurrency`` handshakes at a time; failures are counted, not raised.

        ``filler`` follows the marker in every text the clients send (room setup sizes it).

        With ``deadline`` (seconds), a connection not joined by then fails, and none starts after it.
        The answer holds each joined connection's time from its TCP connect to its ``joined``.
        """
        self.wire = WIRES[wire]
        # Clients share one decoder: decoding keeps no per-connection state.
        self.decoder = self.wire()
        self.filler = filler
        gate = asyncio.Semaphore(concurrency)
        until = None if deadline is None else time.monotonic() + deadline
        joins = Histogram()
        cpu, started_ns = time.process_time(), time.monotonic_ns()
        opened = [self._open(m, gate, until, joins) for m in members]
        results = await asyncio.gather(*opened, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        clients = [r for r in results if isinstance(r, Client)]
        self.clients.extend(clients)
        kinds: dict[str, int] = {}
        for failure in failures:
            kinds[type(failure).__name__] = kinds.get(type(failure).__name__, 0) + 1
        return {
            "connected": len(clients),
            "errors": [repr(f) for f in failures[:5]],
            "error_kinds": kinds,
            "failed": len(failures),
            "joins": joins,
            "started_ns": started_ns,
            "last_joined_ns": max((c.joined_ns for c in clients), default=0),
            "cpu_s": time.process_time() - cpu,
        }

    async def _open(self, member: Member, gate: asyncio.Semaphore, until: float | None, joins: Histogram) -> Client:
        async with gate:
            started_ns = time.monotonic_ns()
            budget = CONNECT_TIMEOUT if until is None else min(CONNECT_TIMEOUT, until - started_ns / 1e9)
            if budget <= 0:
                raise TimeoutError("the connect deadline passed before this connection started")
            ws = await asyncio.wait_for(rawws.connect(member.url), budget)
            try:
                left = budget - (time.monotonic_ns() - started_ns) / 1e9
                await asyncio.wait_for(self._handshake(ws, member), left)
            except BaseException:
                ws.close()
                raise
            joined_ns = time.monotonic_ns()
            joins.record((joined_ns - started_ns) / 1000)  # µs from the TCP connect to ``joined``
        client = Client(member, ws, joined_ns)
        ws.on_close = self._closed
        ws.deliver_to(functools.partial(self._on_text, client))
        return client

    async def _handshake(self, ws: rawws.RawWebSocket, member: Member) -> None:
        wire = self.wire()
        while not wire.ready():
            answer = wire.hello_done(await ws.receive())
            if answer is not None:
                ws.send(answer)
        ws.send(wire.join_frame(member.room, 1, member.since))
        while not wire.joined(data := await ws.receive(), member.room, 1):
            event = wire.decode(data)
            if event is not None and event[0] == ANSWER and isinstance(event[1], str):
                ws.send(event[1])

    def _on_text(self, client: Client, text: str) -> None:
        self.frames += 1
        event = self.decoder.decode(text)
        if event is None:
            return
        kind, payload = event
        if isinstance(payload, Piece):
            self._piece(client, payload)
            if kind == PIECE:
                return
            payload = payload.text
        if kind == ANSWER:
            with contextlib.suppress(ConnectionError):
                client.ws.send(payload)
            return
        if kind == REPLY and payload.split("#", 2)[-1] != self.filler:
            self.stream.wrong_text += 1  # an echo bot answers with the text it was sent
        count(self.tallies[kind], client.seen[kind], self.step, payload)

    def _piece(self, client: Client, piece: Piece) -> None:
        """Follow one reply's stream as a client does (docs/protocol.md, "Streamed replies"), counting faults."""
        tally, held = self.stream, client.streams.get(piece.reply_to)
        if piece.frame == "message":
            if held is None:
                tally.unstreamed += 1
                return
            del client.streams[piece.reply_to]
            if "".join(held.parts) != piece.text:
                tally.broken += 1
            return
        if piece.frame == "stream":  # the text so far, or a new attempt starting again from nothing
            tally.snapshots += 1
            client.streams[piece.reply_to] = Spelled(piece.attempt, piece.seq, [piece.text] if piece.text else [])
            return
        tally.deltas += 1
        if held is None or piece.attempt > held.attempt:
            held = client.streams[piece.reply_to] = Spelled(piece.attempt, 0, [])
            parsed = parse_marker(piece.text) if piece.seq == 1 else None
            if parsed is not None and parsed[0] == self.step:  # the first piece carries the sent text's marker
                tally.first_delta.record((time.monotonic_ns() - parsed[3]) / 1000)
        if piece.attempt < held.attempt or piece.seq <= held.seq:
            tally.repeats += 1
            return
        if piece.seq != held.seq + 1:
            tally.gaps += 1
        held.parts.append(piece.text)
        held.seq = piece.seq

    def _closed(self) -> None:
        self.disconnected += 1

    def begin(self, step: int) -> dict[str, Any]:
        """Start counting a new step from zero."""
        self.step = step
        self.tallies = (Tally(), Tally())
        self.stream = StreamTally()
        self.frames = 0
        for client in self.clients:
            client.seen = (Seen(), Seen())
            client.seq = 0
            client.streams.clear()
        self.cpu_start = time.process_time()
        return {"ok": True}

    async def send(self, senders: list[int], rate: float, duration: float) -> dict[str, Any]:
        """Send ``rate`` messages/s for ``duration`` s, round-robin over local clients ``senders``."""
        wanted = set(senders)
        chosen = [c for c in self.clients if c.member.index in wanted]
        total = round(rate * duration) if chosen else 0
        sent_by_room: dict[str, int] = {}
        start = time.monotonic()
        message_frame = self.wire().message_frame
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            client = chosen[i % len(chosen)]
            text = marker(self.step, client.member.index, client.seq) + self.filler
            client.seq += 1
            with contextlib.suppress(ConnectionError):
                client.ws.send(message_frame(client.member.room, text))
                sent_by_room[client.member.room] = sent_by_room.get(client.member.room, 0) + 1
        return {"sent_by_room": sent_by_room, "seconds": time.monotonic() - start}

    def report(self) -> dict[str, Any]:
        return {
            "message": self.tallies[MESSAGE],
            "reply": self.tallies[REPLY],
            "stream": self.stream,
            "cpu_s": time.process_time() - self.cpu_start,
            "disconnected": self.disconnected,
            "frames": self.frames,
            "clients": len(self.clients),
        }

    async def disconnect(self) -> dict[str, Any]:
        clients, self.clients = self.clients, []
        for client in clients:
            client.ws.on_close = None
            client.ws.close()
        await asyncio.sleep(0)  # let the transports flush their close frames
        self.disconnected = 0
        return {"closed": len(clients)}


async def _serve(conn: Connection) -> None:
    gen = Generator()
    handlers: dict[str, Callable[..., Any]] = {
        "connect": gen.connect,
        "begin": gen.begin,
        "send": gen.send,
        "report": gen.report,
        "disconnect": gen.disconnect,
    }
    loop = asyncio.get_running_loop()
    try:
        while True:
            op, kwargs = await loop.run_in_executor(None, conn.recv)
            if op == "exit":
                break
            try:
                answer = handlers[op](**kwargs)
                if asyncio.iscoroutine(answer):
                    answer = await answer
            except Exception as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            conn.send(answer)
    finally:
        await gen.disconnect()
        conn.send({"bye": True})


def _child(conn: Connection) -> None:
    raise_fd_limit()
    uvloop.run(_serve(conn))


class LoadGen:
    """The runner's handle on one load-generator process."""

    def __init__(self, number: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_end = ctx.Pipe()
        self.process = ctx.Process(target=_child, args=(child_end,), name=f"bench-loadgen-{number}", daemon=True)
        self.process.start()
        child_end.close()
        self._busy = asyncio.Lock()

    async def call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        """Run one command in the process and return its answer; raise RuntimeError if it failed."""
        async with self._busy:
            answer = await asyncio.to_thread(self._roundtrip, op, kwargs)
        if "error" in answer:
            raise RuntimeError(f"loadgen {op}: {answer['error']}")
        return answer

    def _roundtrip(self, op: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        self._conn.send((op, kwargs))
        answer: dict[str, Any] = self._conn.recv()
        return answer

    def stop(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self._conn.send(("exit", {}))
            if self._conn.poll(15):
                self._conn.recv()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
