"""The session state machine, driven with plain values: no event loop, no socket, no broker.

Each test feeds events the way a connection does (the answer to an effect comes back as the
next event) and reads the effects; frames are checked as the JSON the client would receive.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway import effects as fx
from gateway import events as ev
from gateway.principal import Principal
from gateway.session import ABUSE_STRIKES, Session, SessionLimits
from gateway.wire import text_frame
from shared.errors import ChatError, CloseCode, ErrorCode
from shared.models import Bot, BotStatus, ReplyInFlight
from shared.packets import StreamPosition

NOW = 1_800_000_000.0
LIMITS = SessionLimits(
    node_id="node-1",
    heartbeat=20.0,
    max_text_length=100,
    max_rooms=2,
    messages_per_second=10.0,
    messages_burst=5.0,
    jwt_leeway=30.0,
    presence_limit=50,
)
ROOM = "b0123"
BOT = Bot(ROOM, "helper", "echo", owner="olga", status=BotStatus.RUNNING)


def principal(user: str = "alice", exp: float = NOW + 600) -> Principal:
    return Principal(user=user, name=None, roles=frozenset(), exp=exp)


def new_session(user: str = "alice", exp: float = NOW + 600) -> Session:
    return Session("s1", principal(user, exp), LIMITS, NOW)


def frames(effects: list[fx.Effect]) -> list[dict[str, Any]]:
    """The frames the client would receive from these effects, decoded."""
    return [orjson.loads(e.frame) for e in effects if isinstance(e, fx.Send)]


def only(effects: list[fx.Effect], kind: type) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


def receive(session: Session, frame: dict[str, Any], now: float = NOW) -> list[fx.Effect]:
    return session.handle(ev.Received(orjson.dumps(frame).decode()), now)


def opened_room(request: fx.OpenRoom, replay: list[tuple[str, bytes]] = (), first_here: bool = True) -> ev.RoomOpened:  # type: ignore[assignment]
    return ev.RoomOpened(request, ["alice"], 1, first_here, list(replay), "5-0", bool(replay))


def join(session: Session, since: str | None = None, ref: object = "j") -> fx.OpenRoom:
    """Take a session through a join up to the OpenRoom effect; return it."""
    frame: dict[str, Any] = {"type": "join", "room": ROOM, "ref": ref}
    if since is not None:
        frame["since"] = since
    (lookup,) = only(receive(session, frame), fx.LookUpBot)
    assert lookup.purpose is fx.Purpose.JOIN
    (request,) = session.handle(ev.BotFound(lookup, BOT, frozenset({"alice"})), NOW)
    assert isinstance(request, fx.OpenRoom)
    return request


def test_opening_sends_welcome_and_asks_for_the_token_deadline() -> None:
    session = new_session()
    effects = session.handle(ev.Opened(), NOW)
    assert frames(effects) == [
        {"type": "welcome", "protocol": 1, "session": "s1", "user": "alice", "node": "node-1", "heartbeat": 20.0}
    ]
    assert only(effects, fx.Schedule) == [fx.Schedule(NOW + 600 + 30)]


def test_a_join_replays_history_then_the_live_events_buffered_meanwhile_once_each() -> None:
    session = new_session()
    request = join(session, since="1-0")
    assert request == fx.OpenRoom(ROOM, "1-0", BOT, "j")
    assert ROOM in session.pending
    assert ROOM not in session.rooms
    # live events arrive while history is read: one already in the replay, one newer
    assert session.buffered(ROOM, "2-0", None, text_frame(b'{"id":"2-0"}'))
    assert session.buffered(ROOM, "3-0", None, text_frame(b'{"id":"3-0"}'))
    assert not session.buffered("another", "3-0", None, b"x")  # not being joined: delivered as usual
    effects = session.handle(opened_room(request, replay=[("2-0", b'{"id":"2-0"}')]), NOW)
    joined, replayed = frames(effects)
    assert joined == {
        "type": "joined",
        "room": ROOM,
        "bot": BOT.summary(),
        "members": ["alice"],
        "member_count": 1,
        "last_id": "5-0",
        "recovered": True,
        "ref": "j",
    }
    assert replayed == {"id": "2-0"}
    assert only(effects, fx.Write) == [fx.Write(text_frame(b'{"id":"3-0"}'))]  # 2-0 was not sent twice
    (announce,) = only(effects, fx.Announce)
    assert orjson.loads(announce.frame) == {"type": "presence", "room": ROOM, "user": "alice", "event": "join"}
    assert session.rooms == {ROOM}
    assert not session.pending


def test_a_second_connection_of_a_present_user_is_not_announced() -> None:
    session = new_session()
    effects = session.handle(opened_room(join(session), first_here=False), NOW)
    assert only(effects, fx.Announce) == []


@pytest.mark.parametrize(
    ("bot", "members", "code"),
    [(None, frozenset(), "not_found"), (BOT, frozenset({"bob"}), "forbidden")],
)
def test_a_join_the_lookup_refuses_leaves_no_trace(bot: Bot | None, members: frozenset[str], code: str) -> None:
    session = new_session()
    (lookup,) = only(receive(session, {"type": "join", "room": ROOM, "ref": 7}), fx.LookUpBot)
    effects = session.handle(ev.BotFound(lookup, bot, members), NOW)
    assert [(f["type"], f["code"], f["ref"]) for f in frames(effects)] == [("error", code, 7)]
    assert not session.pending
    assert not session.rooms


def test_a_join_that_fails_half_way_is_undone() -> None:
    session = new_session()
    request = join(session)
    effects = session.handle(ev.Failed(request, ChatError(ErrorCode.UNAVAILABLE, "storage is unavailable")), NOW)
    assert only(effects, fx.LeaveRoom) == [fx.LeaveRoom(ROOM)]
    assert [(f["code"], f["ref"]) for f in frames(effects)] == [("unavailable", "j")]
    assert not session.pending
    assert not session.rooms


def test_joining_twice_at_once_and_too_many_rooms_are_refused_without_a_lookup() -> None:
    session = new_session()
    join(session)
    effects = receive(session, {"type": "join", "room": ROOM})
    assert [f["message"] for f in frames(effects)] == ["already joining this room"]
    receive(session, {"type": "join", "room": "b2"})  # the second of two rooms
    session.pending["b2"] = []
    effects = receive(session, {"type": "join", "room": "b3"})
    assert [f["code"] for f in frames(effects)] == ["rate_limited"]
    assert only(effects, fx.LookUpBot) == []


@pytest.mark.parametrize(
    ("bot", "members", "message"),
    [
        (BOT, frozenset({"alice"}), "join the room first"),
        (BOT, frozenset(), "you may not use this room"),
        (None, frozenset(), f"no bot {ROOM!r}"),
    ],
)
@pytest.mark.parametrize(
    "frame",
    [
        {"type": "message", "room": ROOM, "text": "hi", "ref": 1},
        {"type": "typing", "room": ROOM, "state": True, "ref": 1},
        {"type": "leave", "room": ROOM, "ref": 1},
    ],
)
def test_frames_for_a_room_not_joined_are_refused_with_the_right_error(
    frame: dict[str, Any], bot: Bot | None, members: frozenset[str], message: str
) -> None:
    session = new_session()
    (lookup,) = only(receive(session, frame), fx.LookUpBot)
    assert lookup.purpose is fx.Purpose.REFUSE
    effects = session.handle(ev.BotFound(lookup, bot, members), NOW)
    assert [(f["message"], f["ref"]) for f in frames(effects)] == [(message, 1)]
    assert only(effects, fx.Append) == only(effects, fx.SetTyping) == []


def test_a_message_stops_typing_is_stored_and_acknowledged() -> None:
    session = new_session()
    session.handle(opened_room(join(session)), NOW)
    effects = receive(session, {"type": "message", "room": ROOM, "text": "hello", "ref": "m"})
    assert fx.Count("frames_received", "message") in effects
    stop, append = only(effects, fx.SetTyping | fx.Append)  # type: ignore[arg-type]
    assert stop == fx.SetTyping(ROOM, False)
    assert orjson.loads(b"{" + append.tail) == {"room": ROOM, "from": {"kind": "user", "id": "alice"}, "text": "hello"}
    effects = session.handle(ev.Stored(append, "9-0", 9, True), NOW)
    # the ack goes with the room's copy of the message, which this connection gets too
    (ack,) = only(effects, fx.SendWithCopy)
    assert (ack.room, ack.message_id) == (ROOM, "9-0")
    assert orjson.loads(ack.frame) == {"type": "ack", "id": "9-0", "ts": 9, "queued": True, "ref": "m"}
    assert fx.Count("messages_published") in effects
    # a duplicate published nothing: its ack has no copy to wait for
    assert frames(session.handle(ev.Stored(append, "9-0", 9, False, duplicate=True), NOW)) == [
        {"type": "ack", "id": "9-0", "ts": 9, "ref": "m"}
    ]


def test_a_failed_store_tells_the_sender_with_the_ref_and_keeps_the_room() -> None:
    session = new_session()
    session.handle(opened_room(join(session)), NOW)
    (append,) = only(receive(session, {"type": "message", "room": ROOM, "text": "x", "ref": 3}), fx.Append)
    effects = session.handle(ev.Failed(append, ChatError(ErrorCode.UNAVAILABLE, "send it again")), NOW)
    assert frames(effects) == [{"type": "error", "code": "unavailable", "message": "send it again", "ref": 3}]
    assert session.rooms == {ROOM}


def test_leaving_a_joined_room() -> None:
    session = new_session()
    session.handle(opened_room(join(session)), NOW)
    effects = receive(session, {"type": "leave", "room": ROOM, "ref": "l"})
    assert effects[1:] == [fx.LeaveRoom(ROOM), fx.Send(b'{"type":"left","room":"b0123","ref":"l"}')]
    assert not session.rooms


def test_bad_frames_get_errors_and_change_nothing() -> None:
    session = new_session()
    cases = {
        "not json": "frame is not valid JSON",
        '{"type": "message", "room": "b0123", "text": "'
        + "x" * 101
        + '", "ref": 4}': "text is longer than 100 characters",
        '{"type": "fly", "ref": 5}': "unknown frame type 'fly'",
    }
    for text, message in cases.items():
        effects = session.handle(ev.Received(text), NOW)
        assert [f["message"] for f in frames(effects)] == [message]
        assert len(effects) == 1
    assert not session.rooms
    assert not session.pending
    assert not session.closed


def test_a_flood_is_refused_frame_by_frame_then_closed() -> None:
    session = new_session()
    ping = {"type": "ping", "ref": "p"}
    for _ in range(int(LIMITS.messages_burst)):
        assert frames(receive(session, ping)) == [{"type": "pong", "ref": "p"}]
    for strike in range(1, ABUSE_STRIKES + 1):
        effects = receive(session, ping)  # the same instant: no token comes back
        assert frames(effects) == [{"type": "error", "code": "rate_limited", "message": "slow down", "ref": "p"}]
        assert fx.Count("rate_limited") in effects
        assert bool(only(effects, fx.Close)) == (strike == ABUSE_STRIKES)
    assert session.closed
    assert session.close_reason == "rate_limited"
    assert receive(session, ping, NOW + 60) == []  # nothing more after the close


def test_a_pause_refills_the_rate_limit_and_forgives_strikes() -> None:
    session = new_session()
    ping = {"type": "ping"}
    for _ in range(int(LIMITS.messages_burst) + ABUSE_STRIKES - 1):
        receive(session, ping)
    assert frames(receive(session, ping, NOW + 1)) == [{"type": "pong"}]
    for _ in range(ABUSE_STRIKES - 1):
        assert not only(receive(session, ping, NOW + 1), fx.Close)
    assert not session.closed


def test_the_token_deadline_closes_with_4001_unless_refreshed() -> None:
    session = new_session(exp=NOW + 10)
    assert session.handle(ev.DeadlineReached(), NOW + 39) == [fx.Schedule(NOW + 40)]  # leeway not over yet
    effects = session.handle(ev.DeadlineReached(), NOW + 40)
    assert [f["code"] for f in frames(effects)] == ["token_expired"]
    assert only(effects, fx.Close) == [fx.Close(CloseCode.AUTH, "token expired")]
    assert session.close_reason == "expired"
    assert session.handle(ev.DeadlineReached(), NOW + 41) == []


def test_a_refreshed_token_moves_the_deadline_and_another_users_token_is_refused() -> None:
    session = new_session(exp=NOW + 10)
    (check,) = only(receive(session, {"type": "auth", "token": "t", "ref": "a"}), fx.CheckToken)
    assert check == fx.CheckToken("t", "a")
    effects = session.handle(ev.TokenChecked(check, principal("mallory", NOW + 900)), NOW)
    assert [(f["code"], f["ref"]) for f in frames(effects)] == [("forbidden", "a")]
    assert session.deadline == NOW + 40
    effects = session.handle(ev.TokenChecked(check, principal("alice", NOW + 900)), NOW)
    assert effects == [fx.Schedule(NOW + 930), fx.Send(b'{"type":"auth_ok","exp":1800000900,"ref":"a"}')]
    assert session.handle(ev.DeadlineReached(), NOW + 40) == [fx.Schedule(NOW + 930)]


def test_bot_commands_check_who_may_manage() -> None:
    session = new_session("olga")
    (lookup,) = only(receive(session, {"type": "bot.stop", "bot": ROOM, "ref": 2}), fx.LookUpBot)
    (change,) = session.handle(ev.BotFound(lookup, BOT, frozenset()), NOW)
    assert change == fx.ChangeBot(BOT, "stop", 2)
    stopping = Bot(ROOM, "helper", "echo", owner="olga", status=BotStatus.STOPPING)
    assert frames(session.handle(ev.BotChanged(change, stopping), NOW)) == [
        {"type": "bot_status", "bot": ROOM, "status": "stopping", "ref": 2}
    ]
    other = new_session("bob")
    (lookup,) = only(receive(other, {"type": "bot.start", "bot": ROOM}), fx.LookUpBot)
    assert [f["code"] for f in frames(other.handle(ev.BotFound(lookup, BOT, frozenset({"bob"})), NOW))] == ["forbidden"]


def test_an_eviction_during_a_join_wins_over_the_join() -> None:
    session = new_session()
    request = join(session)
    effects = session.handle(ev.Evicted(ROOM), NOW)
    assert frames(effects) == [{"type": "left", "room": ROOM, "reason": "removed"}]
    assert only(effects, fx.LeaveRoom) == [fx.LeaveRoom(ROOM)]
    assert session.handle(opened_room(request), NOW) == [fx.LeaveRoom(ROOM)]  # no joined frame
    assert not session.rooms
    assert session.handle(ev.Evicted(ROOM), NOW) == []


def test_revocation_closes_once() -> None:
    session = new_session()
    effects = session.handle(ev.Revoked(), NOW)
    assert [f["code"] for f in frames(effects)] == ["unauthorized"]
    assert only(effects, fx.Close) == [fx.Close(CloseCode.AUTH, "revoked")]
    assert session.handle(ev.Revoked(), NOW) == []


def test_a_binary_frame_closes_with_1003() -> None:
    session = new_session()
    assert session.handle(ev.ReceivedBinary(), NOW) == [
        fx.Close(CloseCode.UNSUPPORTED_DATA, "binary frames are not supported")
    ]
    assert session.close_reason == "binary"


def test_closing_leaves_joined_and_half_joined_rooms() -> None:
    session = new_session()
    session.handle(opened_room(join(session)), NOW)
    receive(session, {"type": "join", "room": "b2"})
    session.handle(
        ev.BotFound(fx.LookUpBot("b2", fx.Purpose.JOIN, None), Bot("b2", "x", "echo", "alice"), frozenset()), NOW
    )
    assert set(session.pending) == {"b2"}
    assert sorted(only(session.handle(ev.Closed(), NOW), fx.LeaveRoom), key=lambda e: e.room) == [
        fx.LeaveRoom(ROOM),
        fx.LeaveRoom("b2"),
    ]
    assert not session.rooms
    assert not session.pending


def test_a_message_with_a_client_id_carries_it_to_storage() -> None:
    session = new_session()
    session.handle(opened_room(join(session)), NOW)
    effects = receive(session, {"type": "message", "room": ROOM, "text": "hi", "client_id": "tab1:7", "ref": 1})
    (append,) = only(effects, fx.Append)
    assert append.client_id == "tab1:7"
    assert orjson.loads(b"{" + append.tail)["client_id"] == "tab1:7"
    bad = receive(session, {"type": "message", "room": ROOM, "text": "hi", "client_id": "no spaces", "ref": 2})
    assert [(f["code"], f["ref"]) for f in frames(bad)] == [("bad_request", 2)]


def delta_packet(seq: int, attempt: int = 1, reply_to: str = "4-0") -> tuple[StreamPosition, bytes]:
    return StreamPosition(reply_to, attempt, seq), text_frame(f'{{"seq":{seq},"attempt":{attempt}}}'.encode())


def test_a_join_mid_stream_gets_the_snapshot_then_only_the_deltas_after_it() -> None:
    session = new_session()
    request = join(session)
    for seq in (3, 4, 5):  # deltas published while the join read the snapshot
        position, framed = delta_packet(seq)
        assert session.buffered(ROOM, "", position, framed)
    restarted_position, restarted = delta_packet(1, attempt=2)
    session.buffered(ROOM, "", restarted_position, restarted)
    other_position, other = delta_packet(1, reply_to="6-0")  # a reply the snapshot did not have yet
    session.buffered(ROOM, "", other_position, other)
    snapshot = ReplyInFlight(StreamPosition("4-0", 1, 4), "Hello, wo")
    opened = ev.RoomOpened(request, ["alice"], 1, False, [], "5-0", False, [snapshot])
    effects = session.handle(opened, NOW)
    assert frames(effects)[1] == {
        "type": "stream",
        "room": ROOM,
        "reply_to": "4-0",
        "text": "Hello, wo",
        "attempt": 1,
        "seq": 4,
    }
    assert only(effects, fx.Write) == [fx.Write(delta_packet(5)[1]), fx.Write(restarted), fx.Write(other)]


def found(
    session: Session, state: ev.RequestState, sender: str | None = "alice", bot: Bot | None = BOT
) -> list[fx.Effect]:
    session.handle(opened_room(join(session)), NOW)
    (lookup,) = only(receive(session, {"type": "cancel", "room": ROOM, "message": "4-0", "ref": "c"}), fx.LookUpRequest)
    assert lookup == fx.LookUpRequest(ROOM, "4-0", "c")
    return session.handle(ev.RequestFound(lookup, bot, sender, state), NOW)


def test_the_sender_may_cancel_a_reply_in_progress_or_waiting() -> None:
    for state in (ev.RequestState.RUNNING, ev.RequestState.WAITING):
        session = new_session()
        (cancel,) = found(session, state)
        assert cancel == fx.CancelReply(ROOM, "4-0", "c")
        assert frames(session.handle(ev.Cancelled(cancel), NOW)) == [
            {"type": "cancel_ok", "room": ROOM, "message": "4-0", "ref": "c"}
        ]


@pytest.mark.parametrize(
    ("user", "sender", "state", "code"),
    [
        ("alice", "bob", ev.RequestState.RUNNING, "forbidden"),  # someone else's message
        ("olga", "bob", ev.RequestState.RUNNING, None),  # the owner may
        ("alice", "alice", ev.RequestState.ENDED, "conflict"),
        ("alice", None, ev.RequestState.UNKNOWN, "not_found"),
    ],
)
def test_who_may_cancel_and_what(user: str, sender: str | None, state: ev.RequestState, code: str | None) -> None:
    session = new_session(user)
    effects = found(session, state, sender)
    if code is None:
        assert only(effects, fx.CancelReply) == [fx.CancelReply(ROOM, "4-0", "c")]
    else:
        assert [(f["code"], f["ref"]) for f in frames(effects)] == [(code, "c")]
        assert only(effects, fx.CancelReply) == []


def test_a_cancel_in_a_room_not_joined_is_refused_like_any_frame() -> None:
    session = new_session()
    (lookup,) = only(receive(session, {"type": "cancel", "room": ROOM, "message": "4-0"}), fx.LookUpBot)
    assert lookup.purpose is fx.Purpose.REFUSE
