"""Bot kinds: the plugin interface and the catalog of installed kinds.

Kinds are found through the ``chat_gateway.bot_kinds`` entry points, so a package that declares
one adds a kind without touching this code. ``validate_bot_config`` and ``available_kinds`` are
what the gateway uses when a bot is created.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points

from shared.kinds import GROUP, available_kinds, kind_config
from shared.kinds import validate_config as validate_bot_config
from worker.kinds.base import BotKind, Context, RequestFailed

__all__ = ["BotKind", "Context", "KindCatalog", "RequestFailed", "available_kinds", "validate_bot_config"]

log = logging.getLogger(__name__)


class KindCatalog:
    """One instance of each kind a worker met, made on first use and closed with the worker."""

    def __init__(self, extra: Mapping[str, Callable[[], BotKind]] | None = None) -> None:
        self._factories: dict[str, Callable[[], object]] = {ep.name: ep.load for ep in entry_points(group=GROUP)}
        self._factories.update(extra or {})  # kinds given directly (tests, embedding)
        self._instances: dict[str, BotKind] = {}

    def get(self, name: str) -> BotKind:
        """The instance of kind ``name``; raises ValueError when it is not installed or fails to load."""
        instance = self._instances.get(name)
        if instance is not None:
            return instance
        factory = self._factories.get(name)
        if factory is None:
            raise ValueError(f"unknown kind {name!r}; this worker has: {', '.join(sorted(self._factories))}")
        try:
            loaded = factory()
            made: object = loaded() if isinstance(loaded, type) else loaded
        except Exception as exc:
            log.exception("bot kind %s failed to load", name)
            raise ValueError(f"kind {name!r} failed to load: {exc}") from exc
        if not isinstance(made, BotKind):
            raise ValueError(f"kind {name!r} is not a BotKind")
        self._instances[name] = made
        return made

    def config_for(self, name: str, config: Mapping[str, object]) -> dict[str, object]:
        """The kind's normalised config; raises ValueError naming what is wrong."""
        return type(self.get(name)).validate_config(kind_config(dict(config)))

    async def close(self) -> None:
        for instance in self._instances.values():
            try:
                await instance.close()
            except Exception:
                log.exception("closing a bot kind failed")
        self._instances.clear()
