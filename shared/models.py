"""Records both the gateway and the workers read: bots and their statuses. No I/O."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import orjson

from shared import server_frames
from shared.packets import StreamPosition

BUILTIN_KINDS = ("echo", "openai", "webhook")
MAX_BOT_NAME = 64


class BotStatus(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"


@dataclass(frozen=True)
class Bot:
    id: str
    name: str
    kind: str
    owner: str
    config: dict[str, Any] = field(default_factory=dict)
    status: BotStatus = BotStatus.STOPPED
    error: str | None = None
    created: int = 0  # unix ms

    def summary(self) -> dict[str, Any]:
        """The ``bot`` object of ``joined``."""
        return {"id": self.id, "name": self.name, "kind": self.kind, "status": self.status.value, "error": self.error}

    def to_api(self) -> dict[str, Any]:
        """The bot as the HTTP API shows it."""
        return {**self.summary(), "owner": self.owner, "config": self.config, "created": self.created}

    def to_hash(self) -> dict[str, str]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "owner": self.owner,
            "config": orjson.dumps(self.config).decode(),
            "status": self.status.value,
            "error": self.error or "",
            "created": str(self.created),
        }

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> Bot:
        return cls(
            id=data["id"],
            name=data["name"],
            kind=data["kind"],
            owner=data["owner"],
            config=orjson.loads(data.get("config") or "{}"),
            status=BotStatus(data.get("status") or "stopped"),
            error=data.get("error") or None,
            created=int(data.get("created") or 0),
        )

    def status_frame(self, ts: int) -> bytes:
        """The ``bot_status`` frame announcing the current status to the room."""
        return server_frames.encode(server_frames.BotStatusEvent(self.id, self.status.value, ts, self.error or None))

    def with_status(self, status: BotStatus, error: str | None = None) -> Bot:
        return replace(self, status=status, error=error)

    def may_use(self, user: str, *, is_admin: bool, members: frozenset[str] | set[str]) -> bool:
        """Owner, members and admins may join the room."""
        return is_admin or user == self.owner or user in members

    def may_manage(self, user: str, *, is_admin: bool) -> bool:
        """Owner and admins may start, stop, share and delete."""
        return is_admin or user == self.owner

    def may_cancel(self, user: str, *, is_admin: bool, sender: str | None) -> bool:
        """The sender of a request, the owner and admins may stop the bot's reply to it."""
        return user == sender or self.may_manage(user, is_admin=is_admin)


@dataclass(frozen=True, slots=True)
class ReplyInFlight:
    """A bot reply being streamed, as it stands: its text through ``position``."""

    position: StreamPosition
    text: str
