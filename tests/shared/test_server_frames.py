"""Typed server frames encode to exactly the JSON docs/protocol.md documents."""

from __future__ import annotations

import orjson
import pytest

from shared import server_frames as sf
from shared.errors import ErrorCode


@pytest.mark.parametrize(
    ("frame", "wire"),
    [
        (
            sf.Welcome(1, "s", "u", "n", 20.0),
            {"type": "welcome", "protocol": 1, "session": "s", "user": "u", "node": "n", "heartbeat": 20.0},
        ),
        (sf.Ack("1-0", 1), {"type": "ack", "id": "1-0", "ts": 1}),
        (sf.Ack("1-0", 1, queued=True, ref=0), {"type": "ack", "id": "1-0", "ts": 1, "queued": True, "ref": 0}),
        (sf.Left("r"), {"type": "left", "room": "r"}),
        (sf.Left("r", "removed"), {"type": "left", "room": "r", "reason": "removed"}),
        (sf.Pong(), {"type": "pong"}),
        (sf.Error(ErrorCode.FORBIDDEN, "no", "x"), {"type": "error", "code": "forbidden", "message": "no", "ref": "x"}),
        (
            sf.TypingEvent("r", {"kind": "bot", "id": "b"}, False),
            {"type": "typing", "room": "r", "from": {"kind": "bot", "id": "b"}, "state": False},
        ),
        (sf.PresenceEvent("r", "u", "join"), {"type": "presence", "room": "r", "user": "u", "event": "join"}),
        (sf.Reconnect(5), {"type": "reconnect", "delay_ms": 5}),
        (sf.BotStatusReply("b", "running", 1), {"type": "bot_status", "bot": "b", "status": "running", "ref": 1}),
        (
            sf.BotStatusEvent("b", "error", 9, "boom"),
            {"type": "bot_status", "bot": "b", "status": "error", "ts": 9, "error": "boom"},
        ),
        (sf.BotStatusEvent("b", "running", 9), {"type": "bot_status", "bot": "b", "status": "running", "ts": 9}),
        (sf.Status("r", "1-0", "thinking"), {"type": "status", "room": "r", "message_id": "1-0", "state": "thinking"}),
        (
            sf.Delta("r", "1-0", "he", 1, 2),
            {"type": "delta", "room": "r", "reply_to": "1-0", "text": "he", "attempt": 1, "seq": 2},
        ),
        (
            sf.Stream("r", "1-0", "hello", 2, 7),
            {"type": "stream", "room": "r", "reply_to": "1-0", "text": "hello", "attempt": 2, "seq": 7},
        ),
        (sf.CancelOk("r", "1-0", 4), {"type": "cancel_ok", "room": "r", "message": "1-0", "ref": 4}),
        (sf.AuthOk(7, "a"), {"type": "auth_ok", "exp": 7, "ref": "a"}),
    ],
)
def test_frames_encode_to_their_documented_json(frame: sf.ServerFrame, wire: dict[str, object]) -> None:
    encoded = sf.encode(frame)
    assert orjson.loads(encoded) == wire
    assert list(orjson.loads(encoded)) == list(wire)  # "type" first, then the documented order


def test_a_falsy_value_that_is_not_the_default_is_kept() -> None:
    """Only a field still at its "absent" value is left out: ref 0 and an empty error are real values."""
    assert orjson.loads(sf.encode(sf.Pong(0))) == {"type": "pong", "ref": 0}
    assert orjson.loads(sf.encode(sf.Ack("1-0", 1, queued=False, ref="")))["ref"] == ""
