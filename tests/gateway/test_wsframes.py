"""The client frame reader on its own, against frames built by the websockets library (RFC 6455)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from gateway import wsframes as wf

MAX = 1024
generated = settings(deadline=None)  # a shared machine makes timings noisy; the examples are what count


def raw(opcode: Opcode, data: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """One client frame as the websockets library writes it."""
    return Frame(opcode, data, fin=fin).serialize(mask=mask, extensions=[])


def with_first_byte(framed: bytes, first: int) -> bytes:
    """A frame with its first byte (FIN, RSV1-3, opcode) replaced, for what the library refuses to write."""
    return bytes([first]) + framed[1:]


def read(*chunks: bytes, max_size: int = MAX) -> list[wf.Frame]:
    reader = wf.FrameReader(max_size)
    frames: list[wf.Frame] = []
    for chunk in chunks:
        frames += reader.feed(chunk)
    return frames


def test_a_text_frame_is_one_message() -> None:
    """A final masked text frame gives its text."""
    assert read(raw(Opcode.TEXT, "héllo".encode())) == [wf.Text("héllo")]


def test_frames_split_anywhere_are_read_whole() -> None:
    """Bytes fed one at a time give the same frames as all at once."""
    stream = raw(Opcode.TEXT, b"x" * 300) + raw(Opcode.PING, b"p") + raw(Opcode.TEXT, b"y" * 70_000)
    one_by_one = [stream[i : i + 1] for i in range(len(stream))]
    expected = [wf.Text("x" * 300), wf.Ping(b"p"), wf.Fail(1009, "message too big")]
    assert read(stream) == expected
    assert read(*one_by_one) == expected
    assert read(stream, max_size=100_000)[-1] == wf.Text("y" * 70_000)


def test_fragments_are_joined_with_control_frames_between() -> None:
    """A fragmented message comes whole; pings and pongs inside it come out first."""
    stream = (
        raw(Opcode.TEXT, b"one ", fin=False)
        + raw(Opcode.PING, b"a")
        + raw(Opcode.CONT, b"two ", fin=False)
        + raw(Opcode.PONG, b"b")
        + raw(Opcode.CONT, b"three")
    )
    assert read(stream) == [wf.Ping(b"a"), wf.Pong(b"b"), wf.Text("one two three")]


def test_binary_messages_are_read() -> None:
    """Binary messages, fragmented or not, come out as Binary."""
    stream = raw(Opcode.BINARY, b"\x00\x01") + raw(Opcode.BINARY, b"\x02", fin=False) + raw(Opcode.CONT, b"\x03")
    assert read(stream) == [wf.Binary(b"\x00\x01"), wf.Binary(b"\x02\x03")]


def test_utf8_split_across_fragments_is_valid() -> None:
    """A character whose bytes are split over two fragments is decoded."""
    data = "€".encode()
    assert read(raw(Opcode.TEXT, data[:1], fin=False) + raw(Opcode.CONT, data[1:])) == [wf.Text("€")]


@pytest.mark.parametrize(
    "stream",
    [
        raw(Opcode.TEXT, b"\xff"),
        raw(Opcode.TEXT, b"\xed\xa0\x80"),  # a surrogate
        raw(Opcode.TEXT, b"ok", fin=False) + raw(Opcode.CONT, b"\xc3"),  # a character cut at the end
        raw(Opcode.TEXT, b"\xf0\x9f", fin=False) + raw(Opcode.CONT, b"\x41"),  # split, then wrong
        raw(Opcode.CLOSE, struct.pack("!H", 1000) + b"\xff"),
    ],
)
def test_invalid_utf8_fails_with_1007(stream: bytes) -> None:
    """Text (or a close reason) that is not UTF-8 fails with 1007, also across fragments."""
    frames = read(stream)
    assert isinstance(frames[-1], wf.Fail)
    assert frames[-1].code == 1007


def test_invalid_utf8_fails_at_the_fragment_that_shows_it() -> None:
    """The reader fails as soon as a fragment cannot be UTF-8, before the message ends."""
    assert read(raw(Opcode.TEXT, b"\xff", fin=False)) == [wf.Fail(1007, "invalid UTF-8")]


@pytest.mark.parametrize(
    ("stream", "why"),
    [
        (raw(Opcode.TEXT, b"hi", mask=False), "client frames must be masked"),
        (with_first_byte(raw(Opcode.TEXT, b"hi"), 0xC1), "reserved bits set"),
        (with_first_byte(raw(Opcode.TEXT, b"hi"), 0x91), "reserved bits set"),
        (bytes([0x83, 0x80]) + b"\x00" * 4, "reserved opcode"),
        (bytes([0x8B, 0x80]) + b"\x00" * 4, "reserved opcode"),
        (with_first_byte(raw(Opcode.PING, b"x"), 0x09), "fragmented control frame"),
        (bytes([0x89, 0xFE, 0x00, 0x7E]) + b"\x00" * 4 + b"x" * 126, "control frame too long"),
        (raw(Opcode.CONT, b"x"), "continuation without a message"),
        (raw(Opcode.TEXT, b"a", fin=False) + raw(Opcode.TEXT, b"b"), "a new message before the last one ended"),
        (bytes([0x81, 0xFF]) + b"\x80" + b"\x00" * 7, "frame length out of range"),
        (raw(Opcode.CLOSE, b"\x03"), "close frame with a one-byte payload"),
        (raw(Opcode.CLOSE, struct.pack("!H", 1005)), "close code 1005 may not be sent"),
        (raw(Opcode.CLOSE, struct.pack("!H", 999)), "close code 999 may not be sent"),
        (raw(Opcode.CLOSE, struct.pack("!H", 2000)), "close code 2000 may not be sent"),
        (raw(Opcode.CLOSE, struct.pack("!H", 5000)), "close code 5000 may not be sent"),
    ],
)
def test_protocol_errors_fail_with_1002(stream: bytes, why: str) -> None:
    """Frames RFC 6455 forbids fail the connection with 1002, and nothing after them is read."""
    reader = wf.FrameReader(MAX)
    assert reader.feed(stream) == [wf.Fail(1002, why)]
    assert reader.done
    assert reader.feed(raw(Opcode.TEXT, b"after")) == []


def test_a_message_too_big_fails_with_1009_before_its_payload_arrives() -> None:
    """The header of a frame (or fragment) past the limit is enough to fail with 1009."""
    header = raw(Opcode.TEXT, b"x" * (MAX + 1))[:8]
    assert read(header) == [wf.Fail(1009, "message too big")]
    fragments = raw(Opcode.TEXT, b"x" * 600, fin=False) + raw(Opcode.CONT, b"x" * 600)[:8]
    assert read(fragments) == [wf.Fail(1009, "message too big")]
    assert read(raw(Opcode.TEXT, b"x" * MAX)) == [wf.Text("x" * MAX)]


@pytest.mark.parametrize(
    ("payload", "close"),
    [
        (b"", wf.Close(1005, "")),
        (struct.pack("!H", 1000), wf.Close(1000, "")),
        (struct.pack("!H", 1001) + "bye ✓".encode(), wf.Close(1001, "bye ✓")),
        (struct.pack("!H", 3000), wf.Close(3000, "")),
        (struct.pack("!H", 4999), wf.Close(4999, "")),
    ],
)
def test_close_frames_give_their_code_and_reading_stops(payload: bytes, close: wf.Close) -> None:
    """A close gives its code (1005 for none) and reason; nothing after it is read."""
    assert read(raw(Opcode.CLOSE, payload) + raw(Opcode.TEXT, b"late")) == [close]


def test_server_frames_are_what_the_websockets_library_reads() -> None:
    """Close, ping and pong frames the server writes parse as the same frames, unmasked."""
    for framed, opcode, data in [
        (wf.close_frame(1009, "too big"), Opcode.CLOSE, struct.pack("!H", 1009) + b"too big"),
        (wf.close_frame(None), Opcode.CLOSE, b""),
        (wf.control_frame(wf.OP_PING), Opcode.PING, b""),
        (wf.control_frame(wf.OP_PONG, b"abc"), Opcode.PONG, b"abc"),
    ]:
        assert framed == Frame(opcode, data).serialize(mask=False, extensions=[])


def test_a_long_close_reason_is_cut_on_a_character_boundary() -> None:
    """A reason longer than fits in a close frame is cut to 123 bytes of valid UTF-8."""
    framed = wf.close_frame(1000, "é" * 100)
    assert len(framed) <= 127
    assert framed[4:].decode() == "é" * 61


# -- generated streams -----------------------------------------------------------------------
texts = st.text(max_size=200)
controls = st.tuples(st.sampled_from([Opcode.PING, Opcode.PONG]), st.binary(max_size=125))


@st.composite
def conversations(draw: st.DrawFn) -> tuple[list[bytes], list[wf.Frame]]:
    """Frames a client may send, fragmented and interleaved with control frames, and what they mean."""
    frames: list[bytes] = []
    expected: list[wf.Frame] = []
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            opcode, data = draw(controls)
            frames.append(raw(opcode, data))
            expected.append(wf.Ping(data) if opcode is Opcode.PING else wf.Pong(data))
            continue
        binary = draw(st.booleans())
        data = draw(st.binary(max_size=200)) if binary else draw(texts).encode()
        cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
        parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        inserted: list[wf.Frame] = []
        for i, part in enumerate(parts):
            opcode = (Opcode.BINARY if binary else Opcode.TEXT) if i == 0 else Opcode.CONT
            frames.append(raw(opcode, part, fin=i == len(parts) - 1))
            if i < len(parts) - 1 and draw(st.booleans()):
                control, payload = draw(controls)
                frames.append(raw(control, payload))
                inserted.append(wf.Ping(payload) if control is Opcode.PING else wf.Pong(payload))
        expected += inserted
        expected.append(wf.Binary(data) if binary else wf.Text(data.decode()))
    if draw(st.booleans()):
        frames.append(raw(Opcode.CLOSE, struct.pack("!H", 1000)))
        expected.append(wf.Close(1000, ""))
    return frames, expected


def rechunk(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]


@generated
@given(conversations(), st.lists(st.integers(0, 10_000), max_size=20))
def test_generated_conversations_read_back_exactly(
    conversation: tuple[list[bytes], list[wf.Frame]], cuts: list[int]
) -> None:
    """Any valid frame sequence, cut into any chunks, reads back as exactly its messages and controls."""
    frames, expected = conversation
    assert read(*rechunk(b"".join(frames), cuts), max_size=10_000) == expected


@generated
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=10))
def test_any_bytes_give_frames_or_one_failure_last(data: bytes, cuts: list[int]) -> None:
    """Arbitrary bytes never raise: they give frames, and a Close or Fail only as the last one."""
    frames = read(*rechunk(data, cuts))
    assert all(not isinstance(f, wf.Close | wf.Fail) for f in frames[:-1])
    for frame in frames:
        if isinstance(frame, wf.Fail):
            assert frame.code in (1002, 1007, 1009)


@generated
@given(conversations(), st.binary(min_size=1, max_size=50))
def test_garbage_after_valid_frames_keeps_the_frames_before_it(
    conversation: tuple[list[bytes], list[wf.Frame]], garbage: bytes
) -> None:
    """Unmasked garbage after valid frames fails only after every earlier frame was read."""
    frames, expected = conversation
    if expected and isinstance(expected[-1], wf.Close):
        return
    unmasked = bytes([garbage[0] & 0x8F | 0x01, 0x00]) + garbage[1:]  # final text, mask bit clear
    assert read(b"".join(frames) + unmasked, max_size=10_000) == [
        *expected,
        wf.Fail(1002, "client frames must be masked"),
    ]
