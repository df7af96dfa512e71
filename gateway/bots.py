"""Starting and stopping a bot, and stopping one reply: shared by the WebSocket frames and the HTTP API."""

from __future__ import annotations

from shared import packets, server_frames
from shared.broker import Broker
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


async def cancel_reply(broker: Broker, room: str, message_id: str) -> None:
    """Stop the bot's reply to a request: the worker answering it stops, or drops it when it comes up.

    When no worker runs the bot the room is told here, since the request may wait in the inbox
    until the bot is started; the worker then drops it without a second word.
    """
    bot = await broker.registry.get(room)
    running = bot is not None and bot.status is BotStatus.RUNNING
    await broker.replies.cancel(room, message_id, announced=not running)
    if not running:
        frame = server_frames.encode(server_frames.Status(room, message_id, "cancelled"))
        await broker.fanout.publish(room, packets.pack(frame))
