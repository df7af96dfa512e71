"""The rooms of one session and the steps of joining one, without I/O.

A join takes three steps. The ``join`` frame is checked against the room limit
(:meth:`Memberships.join_refused`) and the room's bot looked up; once the bot allows it the room
is being joined (:meth:`Memberships.begin_join`) and its live events are kept
(:meth:`Memberships.buffered`) while the room is opened; once it is open the client gets
``joined``, then what it missed and the live events kept meanwhile, each once
(:meth:`Memberships.room_opened`). Who may join is the session's to decide, with its other checks.
"""

from __future__ import annotations

from gateway import effects as fx
from gateway import events as ev
from gateway import replay
from shared import server_frames as sf
from shared.errors import ErrorCode
from shared.packets import StreamPosition


class Memberships:
    """The rooms a session is in and the ones it is joining.

    :class:`~gateway.session.Session` is one: the hub reads ``pending`` and calls ``buffered`` for
    every event it delivers, so they are the session's own attribute and method.
    """

    __slots__ = ("pending", "rooms")

    def __init__(self) -> None:
        self.rooms: set[str] = set()
        # rooms being joined: their live events wait here (see replay.Waiting) until the replay is done
        self.pending: dict[str, list[replay.Waiting]] = {}

    def buffered(self, room: str, message_id: str, position: StreamPosition | None, framed: bytes) -> bool:
        """Keep a live event of a room being joined; False when the room is not being joined.

        Not an event: it runs for every member of a room on every delivery, so it stays a
        dictionary lookup. The events kept here go out in :meth:`room_opened`, after the replay.
        """
        waiting = self.pending.get(room)
        if waiting is None:
            return False
        waiting.append((message_id, position, framed))
        return True

    def join_refused(self, room: str, max_rooms: int) -> tuple[ErrorCode, str] | None:
        """Why joining ``room`` is refused before its bot is looked up; None when it may be."""
        if room in self.pending:
            return ErrorCode.BAD_REQUEST, "already joining this room"
        if room not in self.rooms and len(self.rooms) + len(self.pending) >= max_rooms:
            return ErrorCode.RATE_LIMITED, f"at most {max_rooms} rooms"
        return None

    def begin_join(self, room: str) -> None:
        """The bot allows the join: keep the room's live events from now on, until it is open."""
        self.pending[room] = []
        self.rooms.discard(room)  # a rejoin replays like a first join

    def room_opened(self, opened: ev.RoomOpened, user: str, presence_limit: int) -> list[fx.Effect]:
        """Joined: the reply, then what was missed and the live events buffered meanwhile, once each."""
        request = opened.request
        room = request.room
        waiting = self.pending.pop(room, None)
        if waiting is None:
            return [fx.LeaveRoom(room)]  # evicted while joining: the client was told with left
        joined = sf.Joined(
            room,
            (opened.bot or request.bot).summary(),
            opened.members,
            opened.member_count,
            opened.last_id,
            opened.recovered,
            request.ref,
        )
        effects: list[fx.Effect] = [fx.Send(sf.encode(joined))]
        effects += replay.merged(room, request.since, opened.replay, opened.streams, waiting)
        self.rooms.add(room)
        if opened.first_here and opened.member_count <= presence_limit:
            effects.append(fx.Announce(room, sf.encode(sf.PresenceEvent(room, user, "join"))))
        return effects

    def abandon_join(self, room: str) -> bool:
        """Opening ``room`` failed: stop keeping its events. False when it was not being joined."""
        return self.pending.pop(room, None) is not None

    def drop(self, room: str) -> bool:
        """Forget ``room``, joined or being joined; False when it was neither."""
        if room not in self.rooms and room not in self.pending:
            return False
        self.rooms.discard(room)
        self.pending.pop(room, None)
        return True

    def drop_all(self) -> list[str]:
        """Forget every room, joined or being joined; returns them."""
        rooms = [*self.rooms, *self.pending]
        self.rooms.clear()
        self.pending.clear()
        return rooms
