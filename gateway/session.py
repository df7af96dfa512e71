"""The protocol state machine of one client connection: events in, effects out. No I/O.

``Session.handle(event, now)`` is all there is. The session holds what the connection is
(principal, joined rooms, rooms being joined and the live events buffered for them, rate
limit, token deadline) and decides every frame the client gets (the rooms and the steps of a
join are its :class:`~gateway.memberships.Memberships`); it never touches a socket, a
timer or the broker. What it needs from the outside world it asks for with an effect, and the
answer comes back as the next event (see :mod:`gateway.events`). The
:class:`~gateway.connection.Connection` carries the effects out, so tests drive a session with
plain values and no event loop, the way websockets tests its ``Protocol``.

Events of one connection are handled one at a time: the connection feeds the answer to an
effect before it reads the client's next frame, so frames are handled in the order sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway import effects as fx
from gateway import events as ev
from gateway.memberships import Memberships
from gateway.ratelimit import TokenBucket
from shared import protocol
from shared import server_frames as sf
from shared.client_frames import Auth, BotCommand, Cancel, ClientFrame, Join, Leave, Ping, SendMessage, Typing
from shared.errors import ChatError, CloseCode, ErrorCode

if TYPE_CHECKING:
    from gateway.principal import Principal

ABUSE_STRIKES = 20  # refused frames in a row before the connection is closed with 4008


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """What a session needs to know about its node; taken from the settings once."""

    node_id: str
    heartbeat: float
    max_text_length: int
    max_rooms: int  # per connection
    messages_per_second: float
    messages_burst: float
    jwt_leeway: float  # the handshake's leeway, so a token accepted there is not closed at once
    presence_limit: int


def user_ref(principal: Principal) -> dict[str, Any]:
    """The ``from`` object of a user's frames."""
    ref: dict[str, Any] = {"kind": "user", "id": principal.user}
    if principal.name:
        ref["name"] = principal.name
    return ref


class Session(Memberships):
    __slots__ = ("_bucket", "_strikes", "close_reason", "closed", "id", "limits", "principal")

    def __init__(self, session_id: str, principal: Principal, limits: SessionLimits, now: float) -> None:
        super().__init__()
        self.id = session_id
        self.principal = principal
        self.limits = limits
        self.closed = False  # a Close effect was returned: nothing more is sent
        self.close_reason = "client"  # the label the connection's end is counted under
        self._bucket = TokenBucket(limits.messages_per_second, limits.messages_burst, now)
        self._strikes = 0

    @property
    def user(self) -> str:
        return self.principal.user

    @property
    def deadline(self) -> float:
        """When the token expires, leeway included (wall clock)."""
        return self.principal.exp + self.limits.jwt_leeway

    def handle(self, event: ev.Event, now: float) -> list[fx.Effect]:
        """Everything the connection must do because of ``event``, in order."""
        match event:
            case ev.Received(text=text):
                return self._received(text, now)
            case ev.ReceivedBinary() | ev.Opened() | ev.DeadlineReached() | ev.Closed() | ev.Evicted() | ev.Revoked():
                return self._lifecycle(event, now)
            case _:
                return self._answered(event)

    def _answered(self, answer: ev.Event) -> list[fx.Effect]:
        match answer:
            case ev.BotFound():
                return self._bot_found(answer)
            case ev.RoomOpened():
                return self.room_opened(answer, self.user, self.limits.presence_limit)
            case ev.Stored(request=request, id=message_id, ts=ts, queued=queued, duplicate=duplicate):
                ack = sf.encode(sf.Ack(message_id, ts, queued, request.ref))
                if duplicate:  # nothing was published: there is no copy to wait for
                    return [fx.Send(ack)]
                # this connection gets its copy of the message with the room's, in the room's order
                return [fx.Count("messages_published"), fx.SendWithCopy(ack, request.room, message_id)]
            case ev.BotChanged(request=request, bot=bot):
                return [self._send(sf.BotStatusReply(bot.id, bot.status.value, request.ref))]
            case ev.TokenChecked(request=request, principal=principal):
                return self._token_checked(request, principal)
            case ev.RequestFound():
                return self._request_found(answer)
            case ev.Cancelled(request=request):
                return [self._send(sf.CancelOk(request.room, request.message, request.ref))]
            case ev.Failed(request=request, error=error):
                return self._failed(request, error)
        raise TypeError(f"not an answer: {answer!r}")

    def _lifecycle(self, event: ev.Event, now: float) -> list[fx.Effect]:
        match event:
            case ev.Opened():
                welcome = sf.Welcome(
                    protocol.PROTOCOL_VERSION, self.id, self.user, self.limits.node_id, self.limits.heartbeat
                )
                return [self._send(welcome), fx.Schedule(self.deadline)]
            case ev.DeadlineReached():
                if now < self.deadline:
                    return [fx.Schedule(self.deadline)]  # refreshed meanwhile
                message = "the token expired; reconnect with a new one"
                return self._close(CloseCode.AUTH, "token expired", "expired", ErrorCode.TOKEN_EXPIRED, message)
            case ev.Evicted(room=room):
                if not self.drop(room):
                    return []
                return [self._send(sf.Left(room, "removed")), fx.LeaveRoom(room)]
            case ev.Revoked():
                return self._close(
                    CloseCode.AUTH, "revoked", "revoked", ErrorCode.UNAUTHORIZED, "your access was revoked"
                )
            case ev.ReceivedBinary():
                self.close_reason = "binary"
                self.closed = True
                return [fx.Close(CloseCode.UNSUPPORTED_DATA, "binary frames are not supported")]
            case ev.Closed():
                self.closed = True
                return [fx.LeaveRoom(room) for room in self.drop_all()]
        raise TypeError(f"not a session event: {event!r}")

    # -- client frames -----------------------------------------------------------------------
    def _received(self, text: str, now: float) -> list[fx.Effect]:
        if self.closed:
            return []
        if not self._bucket.take(now):
            self._strikes += 1
            effects: list[fx.Effect] = [
                fx.Count("rate_limited"),
                self._send(sf.Error(ErrorCode.RATE_LIMITED, "slow down", protocol.peek_ref(text))),
            ]
            if self._strikes >= ABUSE_STRIKES:
                self.close_reason = "rate_limited"
                self.closed = True
                effects.append(fx.Close(CloseCode.POLICY, "rate limit exceeded"))
            return effects
        self._strikes = 0
        try:
            frame = protocol.decode_client_frame(text, max_text_length=self.limits.max_text_length)
        except ChatError as exc:
            return [self._send(sf.Error(exc.code, exc.message, getattr(exc, "ref", None)))]
        return [fx.Count("frames_received", protocol.frame_type(frame)), *self._frame(frame)]

    def _frame(self, frame: ClientFrame) -> list[fx.Effect]:
        match frame:
            case SendMessage(room=room, text=text, ref=ref, client_id=client_id):
                if room not in self.rooms:
                    return [self._refuse(room, ref)]
                tail = protocol.message_tail(room, user_ref(self.principal), text, client_id=client_id)
                return [fx.SetTyping(room, False), fx.Append(room, tail, ref, client_id)]
            case Cancel(room=room, message=message, ref=ref):
                if room not in self.rooms:
                    return [self._refuse(room, ref)]
                return [fx.LookUpRequest(room, message, ref)]
            case Typing(room=room, state=state, ref=ref):
                return [fx.SetTyping(room, state)] if room in self.rooms else [self._refuse(room, ref)]
            case Join(room=room, since=since, ref=ref):
                return self._join(room, since, ref)
            case Leave(room=room, ref=ref):
                if room not in self.rooms:
                    return [self._refuse(room, ref)]
                self.rooms.discard(room)
                return [fx.LeaveRoom(room), self._send(sf.Left(room, ref=ref))]
            case Ping(ref=ref):
                return [self._send(sf.Pong(ref))]
            case BotCommand(bot=bot, action=action, ref=ref):
                return [fx.LookUpBot(bot, fx.Purpose.MANAGE, ref, action=action)]
            case Auth(token=token, ref=ref):
                return [fx.CheckToken(token, ref)]

    def _join(self, room: str, since: str | None, ref: fx.Ref) -> list[fx.Effect]:
        refused = self.join_refused(room, self.limits.max_rooms)
        if refused is not None:
            return [self._error(*refused, ref)]
        return [fx.LookUpBot(room, fx.Purpose.JOIN, ref, since=since)]

    @staticmethod
    def _refuse(room: str, ref: fx.Ref) -> fx.Effect:
        """A frame for a room this connection has not joined: the lookup decides which error."""
        return fx.LookUpBot(room, fx.Purpose.REFUSE, ref)

    # -- answers -----------------------------------------------------------------------------
    def _bot_found(self, found: ev.BotFound) -> list[fx.Effect]:
        request, bot = found.request, found.bot
        if bot is None:
            return [self._error(ErrorCode.NOT_FOUND, f"no bot {request.bot!r}", request.ref)]
        principal = self.principal
        match request.purpose:
            case fx.Purpose.MANAGE:
                if not bot.may_manage(principal.user, is_admin=principal.is_admin):
                    message = "only the owner or an admin may start or stop this bot"
                    return [self._error(ErrorCode.FORBIDDEN, message, request.ref)]
                return [fx.ChangeBot(bot, request.action, request.ref)]
            case fx.Purpose.JOIN:
                if not bot.may_use(principal.user, is_admin=principal.is_admin, members=found.members):
                    return [self._error(ErrorCode.FORBIDDEN, "you may not join this room", request.ref)]
                self.begin_join(bot.id)
                return [fx.OpenRoom(bot.id, request.since, bot, request.ref)]
            case fx.Purpose.REFUSE:
                if not bot.may_use(principal.user, is_admin=principal.is_admin, members=found.members):
                    return [self._error(ErrorCode.FORBIDDEN, "you may not use this room", request.ref)]
                return [self._error(ErrorCode.BAD_REQUEST, "join the room first", request.ref)]

    def _request_found(self, found: ev.RequestFound) -> list[fx.Effect]:
        """A cancel: the sender, the bot's owner and admins may stop a reply that has not ended."""
        request, bot, principal = found.request, found.bot, self.principal
        if bot is None or found.state is ev.RequestState.UNKNOWN:
            return [self._error(ErrorCode.NOT_FOUND, f"no message {request.message!r} for the bot", request.ref)]
        if not bot.may_cancel(principal.user, is_admin=principal.is_admin, sender=found.sender):
            message = "only the sender, the bot's owner or an admin may stop this reply"
            return [self._error(ErrorCode.FORBIDDEN, message, request.ref)]
        if found.state is ev.RequestState.ENDED:
            return [self._error(ErrorCode.CONFLICT, "the reply already ended", request.ref)]
        return [fx.CancelReply(request.room, request.message, request.ref)]

    def _token_checked(self, request: fx.CheckToken, principal: Principal) -> list[fx.Effect]:
        if principal.user != self.user:
            return [self._error(ErrorCode.FORBIDDEN, "the new token is for another user", request.ref)]
        self.principal = principal
        return [fx.Schedule(self.deadline), self._send(sf.AuthOk(int(principal.exp), request.ref))]

    def _failed(self, request: fx.Effect, error: ChatError) -> list[fx.Effect]:
        effects: list[fx.Effect] = []
        if isinstance(request, fx.OpenRoom) and self.abandon_join(request.room):
            effects.append(fx.LeaveRoom(request.room))  # undo what part of the join did happen
        ref = getattr(request, "ref", None)
        effects.append(self._error(error.code, error.message, ref))
        return effects

    # -- frames ------------------------------------------------------------------------------
    def _send(self, frame: sf.ServerFrame) -> fx.Send:
        return fx.Send(sf.encode(frame))

    def _error(self, code: ErrorCode, message: str, ref: fx.Ref) -> fx.Send:
        return self._send(sf.Error(code, message, ref))

    def _close(self, code: int, reason: str, label: str, error: ErrorCode, message: str) -> list[fx.Effect]:
        if self.closed:
            return []
        self.closed = True
        self.close_reason = label
        return [self._error(error, message, None), fx.Close(code, reason)]
