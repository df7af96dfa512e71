"""A long random session of good and bad frames from one user, next to a user who only chats.

The hostile user's frames come from a seeded generator: garbage, unknown types, oversized and
mistyped refs, fields of the wrong type, rooms that do not exist or are forbidden, junk tokens,
and valid joins, leaves, messages, typing and pings in between. After each frame the test sends
a ping and reads every direct answer up to the pong, so each frame's answer is checked exactly:
one ``error`` with the right code (and ref, when it was readable) for a bad frame, the right
reply for a good one. Binary and oversized frames close only the hostile connection (1003 /
1009); it then reconnects and goes on. The peaceful user's connections, on the same node and on
another, stay open and receive every message of the room exactly once.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from tests.conftest import make_token
from tests.nodes import Cluster
from tests.wsclient import ChatSocket

SEED = int(os.environ.get("CHAT_FUZZ_SEED", "20240611"))  # another seed explores another session
STEPS = 600
MAX_FRAME = 8192
MAX_TEXT = 4000
HOSTILE, PEACEFUL, OWNER, STRANGER = "mallory", "bob", "alice", "carol"
DIRECT = frozenset({"error", "ack", "joined", "left", "pong", "auth_ok", "bot_status"})
Expected = tuple[str, str | None, Any]  # (type, error code or None, ref)


@dataclass
class World:
    """The rooms the session aims at and what the hostile connection has done so far."""

    shared: str  # alice's bot; bob and mallory are members
    forbidden: str  # carol's bot; mallory may not join
    own: str  # mallory's bot: she may start and stop it
    joined: bool = False
    sent: list[tuple[str, str]] = field(default_factory=list)  # (id, text) of every message that was acked

    def missing(self, rng: random.Random) -> str:
        return "nosuch" + rng.choice("0123456789abcdef") * rng.randint(1, 8)


def junk_ref(rng: random.Random) -> Any:
    """A valid ref, often a falsy one (0, ""): it must be echoed all the same."""
    return rng.choice([None, 0, "", rng.randint(-(2**53) + 1, 2**53 - 1), text(rng, 0, 64)])


def text(rng: random.Random, low: int, high: int) -> str:
    """Random text with JSON metacharacters, control characters, accents, emoji and astral planes."""
    alphabet = 'ab z"\\/\n\t\u0000\u001f\u00e9\u2028\u4e2d\U0001f600\U00010348{}[],:'
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def valid_text(rng: random.Random) -> str:
    return "m" + text(rng, 0, 60)


# -- the hostile actions: each returns (raw frame, expected direct answers, what to do on the ack) --------------


def garbage(rng: random.Random, world: World) -> tuple[str, list[Expected]]:
    raw = rng.choice(["{", "}", "nul", "[1,", '{"type":', "\u00e9\U0001f600", "{'type': 'ping'}", "  "])
    return raw + text(rng, 0, 20).replace("}", ""), [("error", "bad_request", None)]


def not_an_object(rng: random.Random, world: World) -> tuple[str, list[Expected]]:
    value = rng.choice([[], [1, {"type": "ping"}], 5, "ping", None, True, 1.5])
    return orjson.dumps(value).decode(), [("error", "bad_request", None)]


def unknown_type(rng: random.Random, world: World) -> tuple[str, list[Expected]]:
    ref = junk_ref(rng)
    kind = rng.choice(["pong", "joined", "PING", "bot.restart", "", text(rng, 1, 50), 5, None, ["join"]])
    return frame({"type": kind, "room": world.shared, "ref": ref}), [("error", "bad_request", ref)]


def huge_ref(rng: random.Random, world: World) -> tuple[str, list[Expected]]:
    ref = rng.choice(["r" * rng.randint(65, 2000), 2**53, -(2**53), 1.5, True, [1], {"a": 1}])
    body = rng.choice([{"type": "ping"}, {"type": "message", "room": world.shared, "text": "never sent"}])
    return frame({**body, "ref": ref}), [("error", "bad_request", None)]


def wrong_field(rng: random.Random, world: World) -> tuple[str, list[Expected]]:
    ref = junk_ref(rng)
    body, key, bad = rng.choice(
        [
            ({"type": "join", "room": world.shared}, "room", [1, None, 7, {"a": 1}, "", "r" * 65, "a b", "x\n"]),
            ({"type": "join", "room": world.shared}, "since", [12, "abc", "1-2\n", "\u0661-\u0662", "-1", []]),
            ({"type": "message", "room": world.shared, "text": "x"}, "text", [None, 5, ["x"], "", "   ", "\n\t"]),
            ({"type": "typing", "room": world.shared, "state": True}, "state", [None, 1, "true", [], {}]),
            ({"type": "leave", "room": world.shared}, "room", [None, 3.5, False]),
            ({"type": "bot.start", "bot": world.own}, "bot", [None, 1, "no/slash"]),
            ({"type": "auth", "token": "x"}, "token", [None, "", 42, ["a.b.c"]]),
        ]
    )
    value = rng.choice(bad)
    body = {k: v for k, v in body.items() if k != key} if value is None else {**body, key: value}
    return frame({**body, "ref": ref}), [("error", "bad_request", ref)]


def join_elsewhere(rng: random.Random, world: World) -> tuple[str, list[Expected]]:
    ref = junk_ref(rng)
    if rng.random() < 0.5:
        return frame({"type": "join", "room": world.missing(rng), "ref": ref}), [("error", "not_found", ref)]
    return frame({"type": "join", "room": world.forbidden, "ref": ref}), [("error", "forbidden", ref)]


def act_elsewhere(rng: random.Random, world: World) -> tuple[str, list[Expected]]:
    """message, typing or leave in a room that is not joined: forbidden, not_found, or bad_request."""
    ref = junk_ref(rng)
    room, code = rng.choice(
        [(world.forbidden, "forbidden"), (world.missing(rng), "not_found"), (world.own, "bad_request")]
    )
    body = rng.choice(
        [{"type": "message", "text": "x"}, {"type": "typing", "state": rng.random() < 0.5}, {"type": "leave"}]
    )
    return frame({**body, "room": room, "ref": ref}), [("error", code, ref)]


def bot_command(rng: random.Random, world: World) -> tuple[str, list[Expected]]:
    ref = junk_ref(rng)
    kind = rng.choice(["bot.start", "bot.stop"])
    bot, answer = rng.choice(
        [
            (world.own, ("bot_status", None, ref)),
            (world.shared, ("error", "forbidden", ref)),  # a member, not the owner
            (world.forbidden, ("error", "forbidden", ref)),
            (world.missing(rng), ("error", "not_found", ref)),
        ]
    )
    return frame({"type": kind, "bot": bot, "ref": ref}), [answer]


def auth(rng: random.Random, world: World) -> tuple[str, list[Expected]]:
    ref = junk_ref(rng)
    token, answer = rng.choice(
        [
            ("junk", ("error", "unauthorized", ref)),
            ("a.b.c", ("error", "unauthorized", ref)),
            (make_token(HOSTILE, ttl=-60), ("error", "unauthorized", ref)),
            (make_token(HOSTILE, secret="another-secret-that-is-long-enough-0000"), ("error", "unauthorized", ref)),
            (make_token(PEACEFUL), ("error", "forbidden", ref)),
            (make_token(HOSTILE), ("auth_ok", None, ref)),
        ]
    )
    return frame({"type": "auth", "token": token, "ref": ref}), [answer]


def join_shared(rng: random.Random, world: World) -> tuple[str, list[Expected]]:
    ref = junk_ref(rng)
    body: dict[str, Any] = {"type": "join", "room": world.shared, "ref": ref}
    if world.sent and rng.random() < 0.3:
        body["since"] = rng.choice(world.sent)[0]
    world.joined = True
    return frame(body), [("joined", None, ref)]


def leave_shared(rng: random.Random, world: World) -> tuple[str, list[Expected]]:
    ref = junk_ref(rng)
    answer = ("left", None, ref) if world.joined else ("error", "bad_request", ref)
    world.joined = False
    return frame({"type": "leave", "room": world.shared, "ref": ref}), [answer]


def message_shared(rng: random.Random, world: World) -> tuple[str, list[Expected]]:
    ref = junk_ref(rng)
    if rng.random() < 0.1:
        long = "L" * (MAX_TEXT + 1)
        return frame({"type": "message", "room": world.shared, "text": long, "ref": ref}), [("error", "too_large", ref)]
    body = {"type": "message", "room": world.shared, "text": valid_text(rng), "ref": ref}
    return frame(body), [("ack", None, ref) if world.joined else ("error", "bad_request", ref)]


def typing_shared(rng: random.Random, world: World) -> tuple[str, list[Expected]]:
    ref = junk_ref(rng)
    body = {"type": "typing", "room": world.shared, "state": rng.random() < 0.7, "ref": ref}
    return frame(body), [] if world.joined else [("error", "bad_request", ref)]


def ping(rng: random.Random, world: World) -> tuple[str, list[Expected]]:
    ref = junk_ref(rng)
    return frame({"type": "ping", "ref": ref, "extra": [1, 2]}), [("pong", None, ref)]


ACTIONS: list[tuple[Callable[[random.Random, World], tuple[str, list[Expected]]], int]] = [
    (garbage, 3),
    (not_an_object, 2),
    (unknown_type, 2),
    (huge_ref, 2),
    (wrong_field, 5),
    (join_elsewhere, 2),
    (act_elsewhere, 3),
    (bot_command, 2),
    (auth, 2),
    (join_shared, 3),
    (leave_shared, 1),
    (message_shared, 8),
    (typing_shared, 2),
    (ping, 1),
]
CLOSERS = ("binary", "oversized")


def frame(body: dict[str, Any]) -> str:
    """A client frame as text; a None ref is left out."""
    return orjson.dumps({k: v for k, v in body.items() if not (k == "ref" and v is None)}).decode()


async def direct_answers(sock: ChatSocket, sync: str) -> list[dict[str, Any]]:
    """Send a ping and return the answers to earlier frames that arrive before its pong."""
    await sock.send({"type": "ping", "ref": sync})
    answers: list[dict[str, Any]] = []
    for _ in range(10_000):  # room events may interleave; bounded all the same
        got = await sock.recv()
        sock.unread.clear()
        if got["type"] == "pong" and got.get("ref") == sync:
            return answers
        if got["type"] in DIRECT and not (got["type"] == "bot_status" and "ts" in got):
            answers.append(got)
    raise AssertionError("no pong")


async def hostile_connection(nodes: Cluster, url: str) -> ChatSocket:
    return await nodes.connect(url, HOSTILE)


async def room_messages(sock: ChatSocket, room: str, count: int) -> list[dict[str, Any]]:
    """Read until ``count`` message frames of ``room`` were received on ``sock``; return them all."""

    def received() -> list[dict[str, Any]]:
        return [f for f in sock.seen if f["type"] == "message" and f.get("room") == room]

    for _ in range(100_000):
        if len(received()) >= count:
            break
        await sock.recv(timeout=10)
        sock.unread.clear()
    return received()


async def test_hostile_frames_hurt_no_one_else(cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    """Bad frames get one error each, close only the sender when binary or oversized, and others lose nothing."""
    caplog.set_level(logging.ERROR)
    limits = {"messages_per_second": 100_000, "messages_burst": 100_000, "max_frame_bytes": MAX_FRAME}
    url = await cluster.node(**limits)
    other_url = await cluster.node(**limits)
    shared = await cluster.bot(url, OWNER, members=(HOSTILE, PEACEFUL))
    forbidden = await cluster.bot(url, STRANGER)
    own = await cluster.bot(url, HOSTILE)
    world = World(shared=shared["id"], forbidden=forbidden["id"], own=own["id"])

    peaceful = [await cluster.connect(url, PEACEFUL), await cluster.connect(other_url, PEACEFUL)]
    for sock in peaceful:
        await sock.join(world.shared)
    peaceful_ids: list[str] = []
    hostile = await hostile_connection(cluster, url)
    rng = random.Random(SEED)
    actions, weights = zip(*ACTIONS, strict=True)
    closes = {1003: 0, 1009: 0}

    for step in range(STEPS):
        if rng.random() < 0.15:  # bob keeps chatting, alternating between his connections
            ack = await peaceful[step % 2].request(
                {"type": "message", "room": world.shared, "text": f"bob {step}"}, "ack"
            )
            assert ack["type"] == "ack", ack
            peaceful_ids.append(ack["id"])
        if rng.random() < 0.03:
            closer = rng.choice(CLOSERS)
            if closer == "binary":
                await hostile.ws.send_bytes(orjson.dumps({"type": "ping"}))
                code = 1003
            else:
                await hostile.ws.send_str(frame({"type": "ping", "pad": "p" * MAX_FRAME}))
                code = 1009
            assert await hostile.close_frame() == code, f"step {step}: {closer}"
            closes[code] += 1
            hostile = await hostile_connection(cluster, url)
            world.joined = False
            continue
        action = rng.choices(actions, weights)[0]
        raw, expected = action(rng, world)
        await hostile.ws.send_str(raw)
        answers = await direct_answers(hostile, f"sync-{step}")
        got = [(a["type"], a.get("code"), a.get("ref")) for a in answers]
        assert got == expected, f"step {step}: {action.__name__} sent {raw[:200]!r}, answers {answers}"
        if expected and expected[0][0] == "ack":
            world.sent.append((answers[0]["id"], orjson.loads(raw)["text"]))
        assert not hostile.ws.closed, f"step {step}: {action.__name__} closed the connection"

    # the peaceful connections are still open and got every message of the room exactly once
    expected_ids = sorted(peaceful_ids + [message_id for message_id, _ in world.sent])
    texts = dict(world.sent)
    for sock in peaceful:
        received = await room_messages(sock, world.shared, len(expected_ids))
        assert sorted(m["id"] for m in received) == expected_ids
        assert [m["id"] for m in received] == sorted(
            (m["id"] for m in received), key=lambda i: tuple(map(int, i.split("-")))
        ), "not in history order"
        for message in received:
            if message["id"] in texts:
                assert message["text"] == texts[message["id"]]
                assert message["from"]["id"] == HOSTILE
        pong = await sock.request({"type": "ping"}, "pong")
        assert pong["type"] == "pong"
        assert not sock.ws.closed
    assert len(world.sent) > 20, "the session sent too few valid messages to mean much"
    assert sum(closes.values()) > 0, "the seed produced no binary or oversized frame"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_seeded_session_is_mostly_hostile() -> None:
    """The generator's mix is dominated by bad frames, so the session tests refusals, not just chat."""
    rng = random.Random(SEED)
    world = World(shared="s", forbidden="f", own="o")
    actions, weights = zip(*ACTIONS, strict=True)
    bad = 0
    for _ in range(STEPS):
        _, expected = rng.choices(actions, weights)[0](rng, world)
        bad += any(kind == "error" for kind, _, _ in expected)
    assert bad > STEPS // 2
