"""What each system says on the WebSocket, for the load generator: join, send, and read deliveries.

The load generator speaks every protocol over its own minimal WebSocket client (bench.rawws) so that
the client side stays cheap: the python-socketio client would cost more than the servers it measures. Socket.IO is spoken
as text Engine.IO v4 / Socket.IO v5: ``0{...}`` open, ``40`` connect, ``42[...]`` events, ``42N[...]``
/ ``43N[...]`` acknowledgements, ``2`` ping answered with ``3``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import orjson

# What decode() found: a room message, a bot's reply, a frame to send back, a piece of a streamed reply.
MESSAGE, REPLY, ANSWER, PIECE = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Piece:
    """A ``delta`` or ``stream`` frame of a streamed bot reply, or the reply's final ``message``.

    ``frame`` says which; decode() gives a final message as (REPLY, Piece) when it names the
    request it answers, so that its text can be held against what the deltas spelled.
    """

    frame: str  # "delta", "stream" or "message"
    reply_to: str
    text: str
    attempt: int = 0
    seq: int = 0


Event = tuple[int, str] | tuple[int, Piece]


class WireError(Exception):
    """The server refused a step of the handshake or a join."""


class Wire:
    """Base protocol: JSON frames with a ``type`` (the bare server's dialect)."""

    name: ClassVar[str] = "bare"

    def hello_done(self, data: str) -> str | None:
        """Feed a frame received before joining; return a frame to send, or None. Raise WireError on refusal."""
        return None

    def ready(self) -> bool:
        """True once the connection may join rooms."""
        return True

    def join_frame(self, room: str, ref: int, since: str | None = None) -> str:
        """The join of ``room``; ``since`` is ignored by dialects that cannot resume from a position."""
        return orjson.dumps({"type": "join", "room": room, "ref": ref}).decode()

    def joined(self, data: str, room: str, ref: int) -> bool:
        """True if ``data`` confirms the join of ``room``; raise WireError if it refuses it."""
        frame = orjson.loads(data)
        if frame.get("type") == "error":
            raise WireError(f"join {room}: {frame.get('code')} {frame.get('message')}")
        return bool(frame.get("type") == "joined" and frame.get("room") == room)

    def message_frame(self, room: str, text: str) -> str:
        return orjson.dumps({"type": "message", "room": room, "text": text}).decode()

    def decode(self, data: str) -> Event | None:
        """(MESSAGE or REPLY, text) for a delivery, (ANSWER, frame) for a frame to send back, else None.

        A dialect with streamed replies gives (PIECE, Piece) for their pieces and (REPLY, Piece) for
        a final reply that names its request.
        """
        frame = orjson.loads(data)
        if frame.get("type") == "message":
            return MESSAGE, frame["text"]
        return None


class OursWire(Wire):
    """The gateway's protocol: ``welcome`` first, joins answered by ``joined``, bot replies tagged by ``from``."""

    name: ClassVar[str] = "ours"

    def __init__(self) -> None:
        self.welcomed = False

    def hello_done(self, data: str) -> str | None:
        frame = orjson.loads(data)
        if frame.get("type") == "error":
            raise WireError(f"handshake: {frame.get('code')} {frame.get('message')}")
        self.welcomed = self.welcomed or frame.get("type") == "welcome"
        return None

    def ready(self) -> bool:
        return self.welcomed

    def join_frame(self, room: str, ref: int, since: str | None = None) -> str:
        frame: dict[str, object] = {"type": "join", "room": room, "ref": ref}
        if since is not None:
            frame["since"] = since  # resume after the last message the client holds, as after a reconnect
        return orjson.dumps(frame).decode()

    def decode(self, data: str) -> Event | None:
        frame = orjson.loads(data)
        kind = frame.get("type")
        if kind == "message":
            sender = frame.get("from") or {}
            if sender.get("kind") != "bot":
                return MESSAGE, frame["text"]
            reply_to = frame.get("reply_to")
            return REPLY, (frame["text"] if reply_to is None else Piece("message", reply_to, frame["text"]))
        if kind == "delta" or kind == "stream":
            return PIECE, Piece(kind, frame["reply_to"], frame["text"], frame["attempt"], frame["seq"])
        return None


class SocketIOWire(Wire):
    """Engine.IO v4 / Socket.IO v5 on the default namespace, text packets only."""

    name: ClassVar[str] = "socketio"
    path: ClassVar[str] = "/socket.io/?EIO=4&transport=websocket"

    def __init__(self) -> None:
        self.connected = False

    def hello_done(self, data: str) -> str | None:
        if data.startswith("0"):  # Engine.IO open: connect to the default namespace
            return "40"
        if data.startswith("44"):
            raise WireError(f"connect refused: {data[2:]}")
        if data.startswith("40"):
            self.connected = True
        elif data == "2":
            return "3"
        return None

    def ready(self) -> bool:
        return self.connected

    def join_frame(self, room: str, ref: int, since: str | None = None) -> str:
        return f"42{ref}" + orjson.dumps(["join", room]).decode()

    def joined(self, data: str, room: str, ref: int) -> bool:
        return data.startswith(f"43{ref}[")

    def message_frame(self, room: str, text: str) -> str:
        return "42" + orjson.dumps(["message", {"room": room, "text": text}]).decode()

    def decode(self, data: str) -> Event | None:
        if data.startswith("42["):
            event = orjson.loads(data[2:])
            if event[0] == "message":
                return MESSAGE, event[1]["text"]
            return None
        if data == "2":
            return ANSWER, "3"
        return None


WIRES: dict[str, type[Wire]] = {wire.name: wire for wire in (Wire, OursWire, SocketIOWire)}
