"""The plugin interface of bot kinds.

A kind is a class registered under the ``chat_gateway.bot_kinds`` entry point group. The gateway
calls its ``validate_config`` when a bot is created; a worker makes one instance per kind and
calls ``handle`` for every request of every bot of that kind, one request per bot at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from shared.broker.queue import Request
from shared.models import Bot


class RequestFailed(Exception):
    """The request cannot be answered; ``reason`` is shown to the room in ``status failed``.

    ``retryable=False`` skips the remaining attempts (the same input would fail again).
    """

    def __init__(self, reason: str, *, retryable: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class Context(Protocol):
    """What a kind may do while it handles one request; every call goes live to the room."""

    bot: Bot  # the bot's record: id, name, owner, config as stored
    config: dict[str, Any]  # the config as the kind's validate_config returned it

    async def typing(self, state: bool) -> None:
        """Show or hide the bot's typing indicator (it is on while a request is handled)."""

    async def status(self, state: str, detail: str | None = None) -> None:
        """Report progress: ``state`` is ``"thinking"`` or ``"executing"``."""

    async def delta(self, text: str) -> None:
        """Stream the next piece of the reply; pieces are live only, never stored."""

    async def reply(self, text: str) -> None:
        """Set the final reply (alternative to returning it from ``handle``)."""

    async def history(self, limit: int) -> list[dict[str, Any]]:
        """The conversation before this request, oldest first: at most ``limit`` (capped at 100) messages.

        Each is the ``message`` frame clients get (``id``, ``ts``, ``from``, ``text``, maybe
        ``reply_to``); ``from.kind`` is ``"user"`` or ``"bot"``. A reply comes right after the message
        it answers; the request itself and messages sent after it are not among them.
        """


class BotKind:
    """Base class of bot kinds. Subclasses override ``handle`` and usually ``validate_config``."""

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Return the normalised config, or raise ValueError with a message for the bot's creator."""
        reject_unknown(config, ())
        return {}

    async def handle(self, request: Request, ctx: Context) -> str | None:
        """Answer one request: the returned text (or ``ctx.reply``) is the bot's reply.

        Raise RequestFailed (or any exception) to fail the attempt; the worker retries up to
        the attempt limit, then dead-letters the request and reports ``failed``.
        """
        raise NotImplementedError

    async def close(self) -> None:
        """Release what the instance holds (connections); called when the worker stops."""


def reject_unknown(config: Mapping[str, Any], allowed: Iterable[str]) -> None:
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        accepted = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"unknown config field {unknown[0]!r} (accepted: {accepted})")


def number(config: Mapping[str, Any], name: str, default: float, *, minimum: float, maximum: float) -> float:
    """A numeric config field within [minimum, maximum]."""
    value = config.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"config.{name} must be a number")
    if not minimum <= value <= maximum:
        raise ValueError(f"config.{name} must be between {minimum:g} and {maximum:g}")
    return float(value)
