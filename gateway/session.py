"""What a connection's frames do: join, leave, message, typing, bot commands, ping, auth.

Each handler validates against the connection's state, calls the broker, and answers the
sender. Errors are raised as :class:`ChatError` and turned into ``error`` frames by the caller,
so the connection stays open.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.auth import AuthError
from gateway.connection import Connection
from gateway.handshake import verify_unrevoked
from gateway.node import Node, user_ref
from shared import protocol
from shared.broker import BrokerUnavailable, InboxFull
from shared.errors import ChatError, CloseCode, ErrorCode
from shared.models import Bot, BotStatus
from shared.protocol import Auth, BotCommand, ClientFrame, Join, Leave, Ping, SendMessage, Typing


class Session:
    def __init__(self, node: Node, connection: Connection) -> None:
        self.node = node
        self.connection = connection
        self.settings = node.settings
        self.broker = node.broker

    async def handle(self, frame: ClientFrame) -> None:
        match frame:
            case SendMessage():
                await self.send_message(frame)
            case Typing():
                await self.typing(frame)
            case Join():
                await self.join(frame)
            case Leave():
                await self.leave(frame)
            case Ping(ref=ref):
                self.reply({"type": "pong"}, ref)
            case BotCommand():
                await self.bot_command(frame)
            case Auth():
                await self.refresh_token(frame)

    def reply(self, frame: dict[str, Any], ref: str | int | None) -> None:
        self.connection.send(protocol.encode(protocol.with_ref(frame, ref)))

    # -- access ----------------------------------------------------------------------------
    async def _bot_for(self, room: str) -> tuple[Bot, bool]:
        """The room's bot and whether this user may join it. Raises not_found."""
        bot, members = await asyncio.gather(self.broker.registry.get(room), self.broker.registry.members(room))
        if bot is None:
            raise ChatError(ErrorCode.NOT_FOUND, f"no bot {room!r}")
        principal = self.connection.principal
        return bot, bot.may_use(principal.user, is_admin=principal.is_admin, members=members)

    async def _require_joined(self, room: str) -> None:
        if room in self.connection.rooms:
            return
        _, allowed = await self._bot_for(room)
        if not allowed:
            raise ChatError(ErrorCode.FORBIDDEN, "you may not use this room")
        raise ChatError(ErrorCode.BAD_REQUEST, "join the room first")

    # -- handlers --------------------------------------------------------------------------
    async def join(self, frame: Join) -> None:
        room, connection = frame.room, self.connection
        if room in connection.pending:
            raise ChatError(ErrorCode.BAD_REQUEST, "already joining this room")
        rejoin = room in connection.rooms
        if not rejoin and len(connection.rooms) + len(connection.pending) >= self.settings.max_rooms_per_connection:
            raise ChatError(ErrorCode.RATE_LIMITED, f"at most {self.settings.max_rooms_per_connection} rooms")
        if (
            not rejoin
            and len(self.node.hub.rooms) >= self.settings.max_rooms_per_node
            and room not in self.node.hub.rooms
        ):
            raise ChatError(ErrorCode.UNAVAILABLE, "this node holds too many rooms; try again")
        bot, allowed = await self._bot_for(room)
        if not allowed:
            raise ChatError(ErrorCode.FORBIDDEN, "you may not join this room")
        connection.pending[room] = []
        connection.rooms.discard(room)
        try:
            await self.node.hub.add(room, connection)  # subscribed: live events now buffer in pending
            presence = await self.broker.presence.join(room, connection.user, connection.id)
            if frame.since is not None:
                page = await self.broker.history.read_after(room, frame.since, self.settings.replay_max)
                replay, last_id, recovered = page.entries, page.last_id, page.complete
            else:
                replay, last_id, recovered = [], await self.broker.history.last_id(room), False
        except BaseException:
            connection.pending.pop(room, None)
            self.node.hub.remove(room, connection)
            raise
        joined = {
            "type": "joined",
            "room": room,
            "bot": bot.summary(),
            "members": presence.members,
            "member_count": presence.count,
            "last_id": last_id,
            "recovered": recovered,
        }
        self.reply(joined, frame.ref)
        self._replay(room, replay, frame.since)
        if presence.changed and presence.count <= self.settings.presence_limit:
            await self.node.publish(
                room, self.node.presence_frame(room, connection.user, "join"), exclude=connection.user
            )

    def _replay(self, room: str, replay: list[tuple[str, bytes]], since: str | None) -> None:
        """Send missed messages, then the live events buffered meanwhile, without duplicates."""
        connection = self.connection
        newest = replay[-1][0] if replay else since
        for _, frame in replay:
            connection.send(frame)
        for message_id, framed in connection.pending.pop(room, []):
            if message_id and newest is not None and not protocol.id_newer(message_id, newest):
                continue  # already replayed from history
            connection.write(framed)
        connection.rooms.add(room)

    async def leave(self, frame: Leave) -> None:
        await self._require_joined(frame.room)
        self.connection.rooms.discard(frame.room)
        await self.node.leave_room(frame.room, self.connection)
        self.reply({"type": "left", "room": frame.room}, frame.ref)

    async def send_message(self, frame: SendMessage) -> None:
        await self._require_joined(frame.room)
        connection = self.connection
        if self.node.typing.stopped(frame.room, connection.user):
            await self.node.publish(
                frame.room, self.node.typing_frame(frame.room, connection.user, False), exclude=connection.user
            )
        tail = protocol.message_tail(frame.room, user_ref(connection.principal), frame.text)
        try:
            appended = await self.broker.history.append(frame.room, tail, request=True)
        except (BrokerUnavailable, OSError) as exc:
            self.node.metrics.redis_errors.inc()
            raise ChatError(ErrorCode.UNAVAILABLE, "the message was not stored; send it again") from exc
        except InboxFull:
            raise ChatError(ErrorCode.RATE_LIMITED, "the bot has too many messages waiting; try later") from None
        self.node.metrics.messages_published.inc()
        ack = {"type": "ack", "id": appended.id, "ts": appended.ts}
        if appended.queued:
            ack["queued"] = True
        self.reply(ack, frame.ref)

    async def typing(self, frame: Typing) -> None:
        await self._require_joined(frame.room)
        user = self.connection.user
        if frame.state:
            self.node.typing.started(frame.room, user)
        elif not self.node.typing.stopped(frame.room, user):
            return  # was not typing: nothing to announce
        await self.node.publish(frame.room, self.node.typing_frame(frame.room, user, frame.state), exclude=user)

    async def bot_command(self, frame: BotCommand) -> None:
        bot = await self.node.broker.registry.get(frame.bot)
        if bot is None:
            raise ChatError(ErrorCode.NOT_FOUND, f"no bot {frame.bot!r}")
        principal = self.connection.principal
        if not bot.may_manage(principal.user, is_admin=principal.is_admin):
            raise ChatError(ErrorCode.FORBIDDEN, "only the owner or an admin may start or stop this bot")
        bot = await change_bot_state(self.node, bot, frame.action)
        self.reply({"type": "bot_status", "bot": bot.id, "status": bot.status.value}, frame.ref)

    async def refresh_token(self, frame: Auth) -> None:
        try:
            principal = await verify_unrevoked(frame.token, self.node.verifier, self.broker.revocations)
        except AuthError as exc:
            self.node.metrics.auth_failures.labels(exc.reason).inc()
            raise ChatError(ErrorCode.UNAUTHORIZED, exc.message) from None
        if principal.user != self.connection.user:
            raise ChatError(ErrorCode.FORBIDDEN, "the new token is for another user")
        self.connection.principal = principal
        schedule_expiry(self.node, self.connection)
        self.reply({"type": "auth_ok", "exp": int(principal.exp)}, frame.ref)


WANTED = (BotStatus.STARTING, BotStatus.RUNNING)


async def change_bot_state(node: Node, bot: Bot, action: str) -> Bot:
    """Ask workers to start or stop a bot; shared by the WebSocket command and the HTTP API."""
    registry = node.broker.registry
    if action == "start" and bot.status not in WANTED:
        changed = await registry.set_status(bot.id, BotStatus.STARTING, expect=(bot.status,))
    elif action == "stop" and bot.status in WANTED:
        changed = await registry.set_status(bot.id, BotStatus.STOPPING, expect=WANTED)
    elif action == "stop" and bot.status is BotStatus.ERROR:
        changed = await registry.set_status(bot.id, BotStatus.STOPPED, expect=(BotStatus.ERROR,))
    else:
        return bot
    # None: someone else changed the status first; answer with what it is now
    return changed or await registry.get(bot.id) or bot


def schedule_expiry(node: Node, connection: Connection) -> None:
    """Close the connection with 4001 when its token expires without a refresh."""
    if connection.expiry_timer is not None:
        connection.expiry_timer.cancel()
    # the same leeway the handshake allows, so a token accepted there is not closed at once
    delay = max(0.0, connection.principal.exp + node.settings.jwt_leeway - time.time())
    connection.expiry_timer = asyncio.get_running_loop().call_later(delay, _expired, connection)


def _expired(connection: Connection) -> None:
    if connection.closing:
        return
    connection.send(protocol.error_frame(ErrorCode.TOKEN_EXPIRED, "the token expired; reconnect with a new one"))
    connection.close(CloseCode.AUTH, "token expired")
