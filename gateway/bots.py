"""Starting and stopping a bot: shared by the WebSocket command and the HTTP API."""

from __future__ import annotations

from shared.broker.base import BotRegistry
from shared.models import Bot, BotStatus

WANTED = (BotStatus.STARTING, BotStatus.RUNNING)


async def change_bot_state(registry: BotRegistry, bot: Bot, action: str) -> Bot:
    """Ask workers to start or stop a bot; the bot as it is afterwards."""
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
