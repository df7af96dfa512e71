"""Bot kinds known to this installation, found through the ``chat_gateway.bot_kinds`` entry points.

The gateway validates a new bot's kind and config here without importing the worker package: a
kind's class is loaded through its entry point and asked to check the config.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

GROUP = "chat_gateway.bot_kinds"
PRIVILEGED_KINDS = frozenset({"openai", "webhook"})  # fetch URLs from inside the operator's network: admins only


@cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available_kinds() -> list[str]:
    return sorted(_entry_points())


def validate_config(kind: str, config: Any) -> dict[str, Any]:
    """Return the normalised config for ``kind``; raise ValueError with a message for the user."""
    entry = _entry_points().get(kind)
    if entry is None:
        raise ValueError(f"unknown kind {kind!r}; available: {', '.join(available_kinds())}")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ValueError("config must be an object")
    check = getattr(entry.load(), "validate_config", None)
    return dict(check(config)) if check is not None else dict(config)
