"""Property tests of the frame decoder, the validators and the byte-level frame builders."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import packets, protocol
from shared.client_frames import Auth, BotCommand, Cancel, ClientFrame, Join, Leave, Ping, SendMessage, Typing
from shared.errors import ErrorCode, ProtocolError

MAX_TEXT = 200
ROOM = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
MESSAGE_ID = re.compile(r"[0-9]{1,15}-[0-9]{1,10}")
fuzz = settings(max_examples=200, deadline=None, database=None)

rooms = st.from_regex(ROOM, fullmatch=True)
message_ids = st.from_regex(MESSAGE_ID, fullmatch=True)
client_ids = st.from_regex(r"[A-Za-z0-9_.:\-]{1,64}", fullmatch=True)
# ids as storage makes them: no leading zeros (the frame's ts is the id's first part, copied verbatim)
stored_ids = st.from_regex(r"(0|[1-9][0-9]{0,14})-(0|[1-9][0-9]{0,9})", fullmatch=True)
refs = st.none() | st.text(max_size=protocol.MAX_REF_LENGTH) | st.integers(-(2**53) + 1, 2**53 - 1)
texts = st.text(min_size=1, max_size=MAX_TEXT).filter(str.strip)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# printable: no control characters (the packet header's separators are control characters)
printable = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=80)


def decode(raw: str | bytes) -> ClientFrame:
    return protocol.decode_client_frame(raw, max_text_length=MAX_TEXT)


def wire(frame: dict[str, Any]) -> bytes:
    return orjson.dumps({key: value for key, value in frame.items() if value is not None})


@st.composite
def valid_frames(draw: st.DrawFn) -> tuple[dict[str, Any], ClientFrame]:
    """A well-formed client frame and the dataclass it must decode to."""
    ref = draw(refs)
    kind = draw(st.sampled_from(protocol.CLIENT_TYPES))
    room = draw(rooms)
    if kind == "join":
        since = draw(st.none() | message_ids)
        return {"type": kind, "room": room, "since": since, "ref": ref}, Join(room, since, ref)
    if kind == "leave":
        return {"type": kind, "room": room, "ref": ref}, Leave(room, ref)
    if kind == "message":
        text = draw(texts)
        client_id = draw(st.none() | client_ids)
        frame = {"type": kind, "room": room, "text": text, "client_id": client_id, "ref": ref}
        return frame, SendMessage(room, text, ref, client_id)
    if kind == "cancel":
        message = draw(message_ids)
        return {"type": kind, "room": room, "message": message, "ref": ref}, Cancel(room, message, ref)
    if kind == "typing":
        state = draw(st.booleans())
        return {"type": kind, "room": room, "state": state, "ref": ref}, Typing(room, state, ref)
    if kind in ("bot.start", "bot.stop"):
        return {"type": kind, "bot": room, "ref": ref}, BotCommand(room, kind.removeprefix("bot."), ref)
    if kind == "auth":
        token = draw(st.text(min_size=1, max_size=300))
        return {"type": kind, "token": token, "ref": ref}, Auth(token, ref)
    assert kind == "ping"
    return {"type": kind, "ref": ref}, Ping(ref)


@st.composite
def mangled_frames(draw: st.DrawFn) -> dict[str, Any]:
    """A valid frame with one field replaced by an arbitrary JSON value, or removed."""
    frame, _ = draw(valid_frames())
    key = draw(st.sampled_from(sorted(frame)))
    if draw(st.booleans()):
        frame[key] = draw(json_values)
    else:
        del frame[key]
    return frame


def decodes_or_refuses(raw: str | bytes) -> ClientFrame | ProtocolError:
    """What the decoder does with ``raw``; any exception other than ProtocolError fails the test."""
    try:
        return decode(raw)
    except ProtocolError as exc:
        refused = exc
    assert refused.code in (ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE)
    return refused


@fuzz
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_arbitrary_input_only_raises_protocol_errors(raw: str | bytes) -> None:
    """Any bytes or text either decode to a frame or are refused with a ProtocolError."""
    decodes_or_refuses(raw)


@fuzz
@given(json_values)
def test_arbitrary_json_only_raises_protocol_errors(value: Any) -> None:
    """Any JSON document, object or not, either decodes or is refused with a ProtocolError."""
    decodes_or_refuses(orjson.dumps(value))


@fuzz
@given(mangled_frames())
def test_mangled_frames_only_raise_protocol_errors(frame: dict[str, Any]) -> None:
    """A valid frame with a field removed or of the wrong type is refused cleanly, never crashes."""
    decodes_or_refuses(orjson.dumps(frame))
    decodes_or_refuses(orjson.dumps(frame).decode())


@fuzz
@given(valid_frames())
def test_valid_frames_decode_to_their_dataclass(case: tuple[dict[str, Any], ClientFrame]) -> None:
    """A well-formed frame, as bytes or text, decodes to the matching dataclass with its ref."""
    frame, expected = case
    assert decode(wire(frame)) == expected
    assert decode(wire(frame).decode()) == expected
    assert protocol.frame_type(expected) == frame["type"]


@fuzz
@given(valid_frames(), st.dictionaries(st.text(max_size=10), json_values, max_size=3))
def test_unknown_fields_are_ignored(case: tuple[dict[str, Any], ClientFrame], extra: dict) -> None:
    """Fields a frame type does not know change nothing."""
    frame, expected = case
    extra.pop("client_id", None)  # a known, optional field of messages: left out of a frame, it is not unknown
    assert decode(orjson.dumps({**extra, **{k: v for k, v in frame.items() if v is not None}})) == expected


@fuzz
@given(valid_frames(), st.text(min_size=protocol.MAX_REF_LENGTH + 1, max_size=500))
def test_refs_over_64_characters_are_refused(case: tuple[dict[str, Any], ClientFrame], ref: str) -> None:
    """A string ref longer than 64 characters is a bad_request, and the ref is not echoed."""
    frame, _ = case
    with pytest.raises(ProtocolError) as refused:
        decode(wire({**frame, "ref": ref}))
    assert refused.value.code is ErrorCode.BAD_REQUEST
    assert refused.value.ref is None
    assert protocol.peek_ref(wire({**frame, "ref": ref})) is None


@fuzz
@given(valid_frames(), st.integers(2**53, 2**64) | st.integers(-(2**64), -(2**53)) | st.booleans() | st.floats())
def test_refs_of_other_types_or_out_of_range_are_refused(case: tuple[dict[str, Any], ClientFrame], ref) -> None:
    """Refs that are booleans, floats or integers beyond 2^53 are refused."""
    frame, _ = case
    with pytest.raises(ProtocolError):
        decode(json.dumps({**frame, "ref": ref}))


@fuzz
@given(valid_frames(), st.text(max_size=80))
def test_room_ids_are_checked_exactly(case: tuple[dict[str, Any], ClientFrame], room: str) -> None:
    """A room or bot id is accepted exactly when it is 1-64 ASCII letters, digits, '_', '.' or '-'."""
    frame, _ = case
    key = "bot" if frame["type"].startswith("bot.") else "room"
    if key not in frame:
        return  # ping and auth have no room
    outcome = decodes_or_refuses(wire({**frame, key: room}))
    assert isinstance(outcome, ProtocolError) != bool(ROOM.fullmatch(room))


@fuzz
@given(rooms, st.text(min_size=MAX_TEXT + 1, max_size=MAX_TEXT + 50).filter(str.strip), refs)
def test_long_texts_are_too_large(room: str, text: str, ref) -> None:
    """A text over the limit is refused with too_large, carrying the frame's ref."""
    with pytest.raises(ProtocolError) as refused:
        decode(wire({"type": "message", "room": room, "text": text, "ref": ref}))
    assert refused.value.code is ErrorCode.TOO_LARGE
    assert refused.value.ref == ref


@fuzz
@given(st.one_of(st.text(max_size=40), message_ids, message_ids.map(lambda i: i + "\n"), json_values))
def test_validate_since_accepts_exactly_ascii_message_ids(since: Any) -> None:
    """``since`` is accepted exactly when it is <1-15 ASCII digits>-<1-10 ASCII digits>; None passes."""
    if since is None or (isinstance(since, str) and MESSAGE_ID.fullmatch(since)):
        assert protocol.validate_since(since, ref=7) == since
    else:
        with pytest.raises(ProtocolError) as refused:
            protocol.validate_since(since, ref=7)
        assert refused.value.ref == 7


@fuzz
@given(stored_ids, rooms, printable, st.none() | printable, st.text(max_size=300), st.none() | stored_ids)
def test_composed_messages_are_the_expected_json(
    message_id: str, room: str, sender_id: str, name: str | None, text: str, reply_to: str | None
) -> None:
    """compose_message(id, message_tail(...)) is valid JSON equal to the message frame, for any Unicode text."""
    sender = {"kind": "user", "id": sender_id, **({"name": name} if name is not None else {})}
    frame = protocol.compose_message(message_id, protocol.message_tail(room, sender, text, reply_to))
    expected = {
        "type": "message",
        "id": message_id,
        "ts": int(message_id.partition("-")[0]),
        "room": room,
        "from": sender,
        "text": text,
        **({"reply_to": reply_to} if reply_to is not None else {}),
    }
    assert json.loads(frame) == expected
    assert orjson.loads(frame) == expected
    assert protocol.message_ts(message_id) == expected["ts"]


@fuzz
@given(st.binary(max_size=300), st.none() | message_ids, printable)
def test_packets_round_trip(frame: bytes, message_id: str | None, user: str) -> None:
    """unpack(pack(...)) gives back the id, the excluded user and the exact frame bytes."""
    packet = packets.pack(frame, message_id=message_id or "", exclude_user=user)
    assert packets.unpack(packet) == (message_id or "", user, frame, None)


@fuzz
@given(st.binary(max_size=300), message_ids, st.integers(0, 999_999), st.integers(0, 999_999_999))
def test_stream_positions_round_trip(frame: bytes, reply_to: str, attempt: int, seq: int) -> None:
    """A delta's position survives pack and unpack, next to an empty id and excluded user."""
    position = packets.StreamPosition(reply_to, attempt, seq)
    assert packets.unpack(packets.pack(frame, position=position)) == ("", "", frame, position)


@fuzz
@given(st.binary(max_size=300))
def test_unpack_reads_a_packet_or_raises_bad_packet(data: bytes) -> None:
    """Any bytes unpack to a packet whose id is a history id or empty, or raise BadPacket; nothing else."""
    try:
        packet = packets.unpack(data)
    except packets.BadPacket:
        return
    assert packet.message_id == "" or protocol.MESSAGE_ID.match(packet.message_id)
    assert data.endswith(packet.frame)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a packet",
        b"no-separator\n{}",
        b"abc\x1f\n{}",
        b"1-1x\x1f\n{}",
        b"\x1f\xff\xfe\n{}",
        b"\x1f\x1f1-0/1\n{}",  # a stream position without its seq
        b"\x1f\x1f1-0/x/2\n{}",
        b"\x1f\x1fnot-an-id/1/2\n{}",
        b"1-0\x1f\x1f1-0/1/1\x1f1-0/1/2\n{}",  # two positions
    ],
)
def test_malformed_packet_headers_raise_bad_packet(data: bytes) -> None:
    """Packets without a header, with an id that is no history id, or a user that is not UTF-8 are refused."""
    with pytest.raises(packets.BadPacket):
        packets.unpack(data)


@pytest.mark.parametrize("frame", [b"", b"{", b"[]", b'"x"', b"{}", b'{"type":1}', b"\xff"])
def test_frames_clients_cannot_read_raise_bad_packet(frame: bytes) -> None:
    """A frame that is not a JSON object with a string type is never passed on to clients."""
    with pytest.raises(packets.BadPacket):
        packets.check_frame(frame)
    packets.check_frame(b'{"type":"message"}')


@fuzz
@given(st.binary(max_size=300) | st.text(max_size=300) | json_values.map(orjson.dumps))
def test_peek_ref_never_raises(raw: str | bytes) -> None:
    """peek_ref reads a ref from anything, or gives None; it never raises."""
    ref = protocol.peek_ref(raw)
    assert ref is None or isinstance(ref, str | int)


@fuzz
@given(valid_frames())
def test_peek_ref_reads_the_ref_of_valid_frames(case: tuple[dict[str, Any], ClientFrame]) -> None:
    """The ref peeked before decoding is the ref the decoder reads."""
    frame, expected = case
    assert protocol.peek_ref(wire(frame)) == expected.ref


@fuzz
@given(message_ids, message_ids)
def test_id_order_is_numeric(a: str, b: str) -> None:
    """id_newer orders ids by (milliseconds, sequence) as numbers, not as strings."""
    key_a = tuple(int(part) for part in a.split("-"))
    key_b = tuple(int(part) for part in b.split("-"))
    assert protocol.id_newer(a, b) == (key_a > key_b)


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "join", "room": "room1", "since": "1-2\n"},
        {"type": "join", "room": "room1", "since": "\u0661\u0662-\u0663"},  # Arabic-Indic digits
        {"type": "join", "room": "room1\n"},
        {"type": "bot.start", "bot": "room1\n"},
    ],
)
def test_ids_that_only_look_valid_are_refused(frame: dict[str, Any]) -> None:
    """A trailing newline or non-ASCII digits make a room id or a since a bad_request."""
    with pytest.raises(ProtocolError) as refused:
        decode(orjson.dumps(frame))
    assert refused.value.code is ErrorCode.BAD_REQUEST
