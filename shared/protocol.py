"""Wire frames of protocol v1: client frames decoded and checked, message frames composed. No I/O.

Client frames are decoded once into the typed frames of :mod:`shared.client_frames` that the
session matches on. Server frames are typed in :mod:`shared.server_frames`; message frames are
composed here around the id that only the history append knows.

Between processes a server frame travels inside a *packet* (:mod:`shared.packets`).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from shared.client_frames import Auth, BotCommand, Cancel, ClientFrame, Join, Leave, Ping, SendMessage, Typing
from shared.errors import ErrorCode, ProtocolError

PROTOCOL_VERSION = 1
# \Z, not $: $ also matches before a trailing newline. [0-9], not \d: \d takes any Unicode digit,
# and such an id reaches the storage (a Redis stream command fails on it).
ROOM_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}\Z")
MESSAGE_ID = re.compile(r"^[0-9]{1,15}-[0-9]{1,10}\Z")
MAX_REF_LENGTH = 64
# a client's own id for a message it sends, so a resend after a reconnect is stored once
CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}\Z")


def _ref(frame: dict[str, Any]) -> str | int | None:
    ref = frame.get("ref")
    if ref is None:
        return None
    if isinstance(ref, bool) or not isinstance(ref, str | int):
        raise ProtocolError("ref must be a string or an integer")
    if isinstance(ref, str) and len(ref) > MAX_REF_LENGTH:
        raise ProtocolError(f"ref is longer than {MAX_REF_LENGTH} characters")
    if isinstance(ref, int) and not -(2**53) < ref < 2**53:
        raise ProtocolError("ref is out of range")
    return ref


def _room(frame: dict[str, Any], key: str, ref: str | int | None) -> str:
    room = frame.get(key)
    if not isinstance(room, str):
        raise ProtocolError(f"{key} must be a string", ref=ref)
    if not ROOM_ID.match(room):
        raise ProtocolError(f"{key} must be 1-64 letters, digits, '_', '.' or '-'", ref=ref)
    return room


def _text(frame: dict[str, Any], ref: str | int | None, max_length: int) -> str:
    text = frame.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ProtocolError("text must be a non-empty string", ref=ref)
    if len(text) > max_length:
        raise ProtocolError(f"text is longer than {max_length} characters", ref=ref, code=ErrorCode.TOO_LARGE)
    return text


def validate_since(since: object, ref: str | int | None = None) -> str | None:
    """Return ``since`` when it is absent or a well-formed message id; raise ProtocolError otherwise."""
    if since is None:
        return None
    if not isinstance(since, str) or not MESSAGE_ID.match(since):
        raise ProtocolError("since must be a message id from this room", ref=ref)
    return since


def validate_client_id(client_id: object, ref: str | int | None = None) -> str | None:
    """Return ``client_id`` when absent or 1-64 letters, digits, '_', '.', ':' or '-'; raise otherwise."""
    if client_id is None:
        return None
    if not isinstance(client_id, str) or not CLIENT_ID.match(client_id):
        raise ProtocolError("client_id must be 1-64 letters, digits, '_', '.', ':' or '-'", ref=ref)
    return client_id


def _message(frame: dict[str, Any], ref: str | int | None, max_text: int) -> ClientFrame:
    room, text = _room(frame, "room", ref), _text(frame, ref, max_text)
    return SendMessage(room, text, ref, validate_client_id(frame.get("client_id"), ref))


def _cancel(frame: dict[str, Any], ref: str | int | None, _: int) -> ClientFrame:
    message = frame.get("message")
    if not isinstance(message, str) or not MESSAGE_ID.match(message):
        raise ProtocolError("message must be the id of a message in this room", ref=ref)
    return Cancel(_room(frame, "room", ref), message, ref)


def _typing(frame: dict[str, Any], ref: str | int | None, _: int) -> ClientFrame:
    state = frame.get("state")
    if not isinstance(state, bool):
        raise ProtocolError("state must be true or false", ref=ref)
    return Typing(_room(frame, "room", ref), state, ref)


def _join(frame: dict[str, Any], ref: str | int | None, _: int) -> ClientFrame:
    return Join(_room(frame, "room", ref), validate_since(frame.get("since"), ref), ref)


def _leave(frame: dict[str, Any], ref: str | int | None, _: int) -> ClientFrame:
    return Leave(_room(frame, "room", ref), ref)


def _ping(frame: dict[str, Any], ref: str | int | None, _: int) -> ClientFrame:
    return Ping(ref)


def _bot_start(frame: dict[str, Any], ref: str | int | None, _: int) -> ClientFrame:
    return BotCommand(_room(frame, "bot", ref), "start", ref)


def _bot_stop(frame: dict[str, Any], ref: str | int | None, _: int) -> ClientFrame:
    return BotCommand(_room(frame, "bot", ref), "stop", ref)


def _auth(frame: dict[str, Any], ref: str | int | None, _: int) -> ClientFrame:
    token = frame.get("token")
    if not isinstance(token, str) or not token:
        raise ProtocolError("token must be a non-empty string", ref=ref)
    return Auth(token, ref)


_DECODERS = {
    "message": _message,
    "cancel": _cancel,
    "typing": _typing,
    "join": _join,
    "leave": _leave,
    "ping": _ping,
    "bot.start": _bot_start,
    "bot.stop": _bot_stop,
    "auth": _auth,
}
CLIENT_TYPES = tuple(_DECODERS)


def decode_client_frame(raw: str | bytes, *, max_text_length: int) -> ClientFrame:
    """Decode one client text frame. Raises ProtocolError (with the ref when readable)."""
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolError("frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise ProtocolError("frame must be a JSON object")
    ref = _ref(frame)
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("type must be a string", ref=ref)
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise ProtocolError(f"unknown frame type {kind[:40]!r}", ref=ref)
    return decoder(frame, ref, max_text_length)


def peek_ref(raw: str | bytes) -> str | int | None:
    """The ref of a frame that is refused before decoding (rate limits), or None."""
    try:
        frame = orjson.loads(raw)
        return _ref(frame) if isinstance(frame, dict) else None
    except (orjson.JSONDecodeError, ProtocolError):
        return None


def frame_type(frame: ClientFrame) -> str:
    """The wire ``type`` of a decoded frame (a bounded set: safe as a metric label)."""
    if isinstance(frame, BotCommand):
        return f"bot.{frame.action}"
    return _TYPE_NAMES[type(frame)]


_TYPE_NAMES: dict[type, str] = {
    SendMessage: "message",
    Cancel: "cancel",
    Typing: "typing",
    Join: "join",
    Leave: "leave",
    Ping: "ping",
    Auth: "auth",
}


def encode(frame: dict[str, Any]) -> bytes:
    """JSON bytes of a frame given as a dict (typed server frames: :mod:`shared.server_frames`)."""
    return orjson.dumps(frame)


# -- message frames: composed around the id that only the history append knows -------------

MESSAGE_HEAD = b'{"type":"message","id":"'


def message_tail(
    room: str,
    sender: dict[str, Any],
    text: str,
    reply_to: str | None = None,
    *,
    client_id: str | None = None,
    state: str | None = None,
) -> bytes:
    """The part of a message frame after ``id`` and ``ts``: ``"room":...}``.

    The broker appends it to history and builds the frame with :func:`compose_message`, so the
    history id is inside the frame every member receives. ``client_id`` is the sender's own id
    of the message; ``state`` marks a bot reply that did not complete (``"cancelled"``).
    """
    body: dict[str, Any] = {"room": room, "from": sender, "text": text}
    if reply_to is not None:
        body["reply_to"] = reply_to
    if client_id is not None:
        body["client_id"] = client_id
    if state is not None:
        body["state"] = state
    return orjson.dumps(body)[1:]


def user_sender(tail: bytes) -> str | None:
    """The user who sent a stored message (its tail, see :func:`message_tail`); None for a bot's."""
    try:
        body = orjson.loads(b"{" + tail)
    except orjson.JSONDecodeError:
        return None
    sender = body.get("from") if isinstance(body, dict) else None
    if isinstance(sender, dict) and sender.get("kind") == "user" and isinstance(sender.get("id"), str):
        return str(sender["id"])
    return None


def user_sender_of_frame(frame: bytes) -> str | None:
    """The user who sent a whole message frame; None for a bot's or for anything unreadable."""
    return user_sender(frame[1:]) if frame.startswith(b"{") else None


def message_ts(message_id: str) -> int:
    """Unix milliseconds of a message, read from its id."""
    return int(message_id.partition("-")[0])


def compose_message(message_id: str, tail: bytes, *, queued: bool = False) -> bytes:
    """The full message frame; must equal what the Redis append script builds.

    ``queued`` marks the live frame of a request that waits for its bot; history never keeps it.
    """
    ts = message_id.partition("-")[0]
    mark = b'"queued":true,' if queued else b""
    return b"".join((MESSAGE_HEAD, message_id.encode(), b'","ts":', ts.encode(), b",", mark, tail))


def id_newer(a: str, b: str) -> bool:
    """True when message id ``a`` comes after ``b`` in history order."""
    a_ms, _, a_seq = a.partition("-")
    b_ms, _, b_seq = b.partition("-")
    return (int(a_ms), int(a_seq)) > (int(b_ms), int(b_seq))
