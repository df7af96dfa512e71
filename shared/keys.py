"""Every Redis key, stream and channel name. Nothing else builds names.

All names of one room share the hash tag ``{room}`` so a room's history, bot record, inbox,
presence and channel live in one Redis Cluster slot: the append script touches them together.
Room ids are validated (letters, digits, ``_.-``), so they never contain braces.
"""

from __future__ import annotations

from dataclasses import dataclass

STREAM_TEXT = ":text"  # the suffix of a reply's text key, after its hash's key


@dataclass(frozen=True)
class Keys:
    prefix: str

    # -- one room (= one bot) ------------------------------------------------------------
    def history(self, room: str) -> str:
        """Stream of the room's messages; entry id = message id."""
        return f"{self.prefix}:{{{room}}}:history"

    def channel(self, room: str) -> str:
        """Pub/sub channel every room event goes through."""
        return f"{self.prefix}:{{{room}}}:events"

    def bot(self, bot: str) -> str:
        """Hash with the bot's record (name, kind, owner, config, status, error)."""
        return f"{self.prefix}:{{{bot}}}:bot"

    def members(self, bot: str) -> str:
        """Set of users the owner shared the room with."""
        return f"{self.prefix}:{{{bot}}}:members"

    def presence_connections(self, room: str) -> str:
        """Sorted set ``user US connection`` scored by expiry (ms), refreshed by live nodes."""
        return f"{self.prefix}:{{{room}}}:presence:conns"

    def presence_users(self, room: str) -> str:
        """Hash user -> number of live connections in the room."""
        return f"{self.prefix}:{{{room}}}:presence:users"

    def inbox(self, bot: str) -> str:
        """Stream of chat requests waiting for the bot."""
        return f"{self.prefix}:{{{bot}}}:inbox"

    def dead_letters(self, bot: str) -> str:
        """Stream of requests that failed too often."""
        return f"{self.prefix}:{{{bot}}}:dead"

    def replied(self, bot: str, message_id: str) -> str:
        """Marker holding the reply id of a request, so a retried request is answered once."""
        return f"{self.prefix}:{{{bot}}}:replied:{message_id}"

    def stream(self, room: str, reply_to: str) -> str:
        """Hash of a reply being written: attempt ``a``, its last piece kept ``s``."""
        return f"{self.prefix}:{{{room}}}:stream:{reply_to}"

    def stream_text(self, room: str, reply_to: str) -> str:
        """The text so far of a reply being written, appended to piece by piece."""
        return self.stream(room, reply_to) + STREAM_TEXT

    def streams(self, room: str) -> str:
        """Set of the ``reply_to`` ids of the room's replies being written."""
        return f"{self.prefix}:{{{room}}}:streams"

    def cancel(self, room: str, message_id: str) -> str:
        """Marker of a cancelled request: ``announce`` (the worker tells the room) or ``announced``."""
        return f"{self.prefix}:{{{room}}}:cancel:{message_id}"

    def sent(self, room: str, user: str, client_id: str) -> str:
        """Marker holding the id of the message a user sent with ``client_id`` (which never holds a '/')."""
        return f"{self.prefix}:{{{room}}}:sent:{client_id}/{user}"

    def lease(self, bot: str) -> str:
        """The worker that serves the bot now; expires when that worker dies."""
        return f"{self.prefix}:{{{bot}}}:lease"

    # -- indexes across rooms ------------------------------------------------------------
    def all_bots(self) -> str:
        return f"{self.prefix}:bots"

    def user_bots(self, user: str) -> str:
        """Set of bots a user owns or is a member of."""
        return f"{self.prefix}:user:{user}:bots"

    def running_bots(self) -> str:
        """Set of bots whose wanted state is running: what workers serve."""
        return f"{self.prefix}:bots:running"

    def workers(self) -> str:
        """Sorted set of live workers scored by heartbeat expiry, to share bots fairly."""
        return f"{self.prefix}:workers"

    def control_channel(self) -> str:
        """Pub/sub channel telling workers that the set of running bots changed."""
        return f"{self.prefix}:control"

    def revoked(self, user: str) -> str:
        return f"{self.prefix}:revoked:{user}"

    def node_probe(self, node: str) -> str:
        """Channel a node publishes to itself to prove its pub/sub path works."""
        return f"{self.prefix}:probe:{node}"

    def group(self) -> str:
        """Consumer group name of the bot inboxes."""
        return "workers"
