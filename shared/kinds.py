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
# What a bot does with a user's new message while it is still on an earlier one of that user:
# queue it (answer both), answer only the latest of those not started, or stop the one in progress.
SEND_POLICIES = ("queue", "latest", "interrupt")
POLICY_FIELD = "send_policy"  # a config field of every kind, checked here rather than by the kind


def send_policy(config: Any) -> str:
    """The bot's send policy from its config; raises ValueError naming the accepted ones."""
    policy = config.get(POLICY_FIELD, "queue") if isinstance(config, dict) else "queue"
    if policy not in SEND_POLICIES:
        raise ValueError(f"config.{POLICY_FIELD} must be one of {', '.join(SEND_POLICIES)}")
    return str(policy)


def kind_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config without the fields every kind has: what the kind itself checks."""
    return {name: value for name, value in config.items() if name != POLICY_FIELD}


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
    policy = send_policy(config)
    check = getattr(entry.load(), "validate_config", None)
    own = kind_config(config)
    normalised = dict(check(own)) if check is not None else own
    if policy != "queue":
        normalised[POLICY_FIELD] = policy
    return normalised
