"""Carries out the effects of sessions that reach beyond their socket: broker, hub, typing.

The session decides, the carrier does: each effect that asks for an answer gets one back as
an event (see :mod:`gateway.events`), and any failure becomes ``Failed`` with the error the
client is told, so the session can undo what it started. This is the one place where
broker exceptions are turned into client errors for the WebSocket.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from prometheus_client import Counter

from gateway import effects as fx
from gateway import events as ev
from gateway.announcer import Announcer
from gateway.auth import TokenVerifier
from gateway.bots import cancel_reply, change_bot_state
from gateway.handshake import verify_unrevoked
from gateway.hot_counters import HotCounter
from gateway.hub import Hub
from gateway.metrics import GatewayMetrics
from gateway.principal import AuthError
from shared.broker import Broker
from shared.broker.base import BrokerUnavailable, ClientId, HistoryPage, InboxFull, RequestInfo
from shared.errors import ChatError, ErrorCode
from shared.settings import Settings

if TYPE_CHECKING:
    from gateway.connection import Connection

log = logging.getLogger(__name__)


def request_state(info: RequestInfo) -> ev.RequestState:
    if info.sender is None:
        return ev.RequestState.UNKNOWN
    if info.answered or info.cancelled:
        return ev.RequestState.ENDED
    return ev.RequestState.RUNNING if info.streaming else ev.RequestState.WAITING


class Carrier:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        hub: Hub,
        announcer: Announcer,
        verifier: TokenVerifier,
        metrics: GatewayMetrics,
    ) -> None:
        self._settings = settings
        self._broker = broker
        self._hub = hub
        self._announcer = announcer
        self._verifier = verifier
        self._metrics = metrics
        # the counters a session names in its Count effects (each has inc())
        self._counters: dict[str, Counter | HotCounter] = {
            "rate_limited": metrics.rate_limited,
            "messages_published": metrics.messages_published,
        }

    def signal(self, connection: Connection, effect: fx.SetTyping | fx.Announce) -> None:
        """Typing and announcements: published behind, never waited for (losing one is harmless)."""
        match effect:
            case fx.SetTyping(room=room, state=state):
                self._announcer.typing_changed_soon(room, connection.user, state)
            case fx.Announce(room=room, frame=frame):
                self._announcer.publish_soon(room, frame, exclude=connection.user)

    def delivered(self, room: str, message_id: str) -> bool:
        """Whether the room's copy of ``message_id`` went out on this node already."""
        return self._hub.delivered(room, message_id)

    def count(self, effect: fx.Count) -> None:
        if effect.counter == "frames_received":
            self._metrics.frames_received.labels(effect.label).inc()
        else:
            self._counters[effect.counter].inc()

    async def run(self, connection: Connection, effect: fx.Effect) -> ev.Event | None:
        """Carry out one effect that needs I/O; its answer, if it has one."""
        try:
            return await self._run(connection, effect)
        except ChatError as exc:
            return ev.Failed(effect, exc)
        except AuthError as exc:
            self._metrics.auth_failures.labels(exc.reason).inc()
            return ev.Failed(effect, ChatError(ErrorCode.UNAUTHORIZED, exc.message))
        except InboxFull:
            return ev.Failed(
                effect, ChatError(ErrorCode.RATE_LIMITED, "the bot has too many messages waiting; try later")
            )
        except (BrokerUnavailable, OSError):
            self._metrics.redis_errors.inc()
            message = "the message was not stored; send it again" if isinstance(effect, fx.Append) else None
            return ev.Failed(effect, ChatError(ErrorCode.UNAVAILABLE, message or "storage is unavailable; retry"))
        except Exception:
            log.exception("carrying out %s failed", type(effect).__name__, extra={"session": connection.session.id})
            return ev.Failed(effect, ChatError(ErrorCode.INTERNAL, "internal error"))

    async def _run(self, connection: Connection, effect: fx.Effect) -> ev.Event | None:
        broker, user = self._broker, connection.user
        match effect:
            case fx.Append(room=room, tail=tail, client_id=client_id):
                sent = ClientId(user, client_id) if client_id is not None else None
                appended = await broker.history.append(room, tail, request=True, client_id=sent)
                return ev.Stored(effect, appended.id, appended.ts, appended.queued, appended.duplicate)
            case fx.LookUpRequest(room=room, message=message):
                bot, info = await asyncio.gather(broker.registry.get(room), broker.replies.request(room, message))
                return ev.RequestFound(effect, bot, info.sender, request_state(info))
            case fx.CancelReply(room=room, message=message):
                await cancel_reply(broker, room, message)
                return ev.Cancelled(effect)
            case fx.LookUpBot(bot=bot_id):
                bot, members = await asyncio.gather(broker.registry.get(bot_id), broker.registry.members(bot_id))
                return ev.BotFound(effect, bot, frozenset(members))
            case fx.OpenRoom():
                return await self._open_room(connection, effect)
            case fx.LeaveRoom(room=room):
                await self.leave_room(connection, room)
            case fx.ChangeBot(bot=bot, action=action):
                return ev.BotChanged(effect, await change_bot_state(broker.registry, bot, action))
            case fx.CheckToken(token=token):
                return ev.TokenChecked(effect, await verify_unrevoked(token, self._verifier, broker.revocations))
            case _:
                raise TypeError(f"not an effect the carrier runs: {effect!r}")
        return None

    async def _open_room(self, connection: Connection, effect: fx.OpenRoom) -> ev.RoomOpened:
        room, hub, settings = effect.room, self._hub, self._settings
        if room not in hub.rooms and len(hub.rooms) >= settings.max_rooms_per_node:
            raise ChatError(ErrorCode.UNAVAILABLE, "this node holds too many rooms; try again")
        await hub.add(room, connection)  # subscribed: live events now wait in the session's pending
        broker, history = self._broker, self._broker.history
        reading = history.read_after(room, effect.since, settings.replay_max) if effect.since else None
        # one round trip: each of these queues its commands at its first step, in this order, and
        # Redis runs a pipeline in order, so the replies in flight are read after history (a reply
        # that ends meanwhile is then a live message, never a snapshot after its own message)
        # the bot is read again, after the subscribe: a status change published before it would
        # be missed, and `joined` would show the status the access check read
        presence, read, streams, bot = await asyncio.gather(
            broker.presence.join(room, connection.user, connection.session.id),
            reading if reading is not None else history.last_id(room),
            broker.replies.in_flight(room),
            broker.registry.get(room),
        )
        if isinstance(read, HistoryPage):
            replay, last_id, recovered = read.entries, read.last_id, read.complete
        else:
            replay, last_id, recovered = [], read, False
        return ev.RoomOpened(
            effect, presence.members, presence.count, presence.changed, replay, last_id, recovered, streams, bot
        )

    async def leave_room(self, connection: Connection, room: str) -> None:
        """Stop delivering the room here; the others hear when the user's last connection left."""
        user = connection.user
        self._hub.remove(room, connection)
        if user not in self._hub.local_users(room):
            await self._announcer.typing_changed(room, user, False)
        try:
            change = await self._broker.presence.leave(room, user, connection.session.id)
        except (BrokerUnavailable, OSError) as exc:
            # the room is left here all the same; the presence entry expires with its TTL
            self._metrics.redis_errors.inc()
            log.warning("leaving a room's presence failed: %s", exc, extra={"session": connection.session.id})
            return
        if change.changed and change.count < self._settings.presence_limit:
            await self._announcer.presence(room, user, "leave")
