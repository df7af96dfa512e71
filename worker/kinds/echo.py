"""``echo``: replies with the text it got, after ``config.delay`` seconds of thinking."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from shared.broker.queue import Request
from worker.kinds.base import BotKind, Context, number, reject_unknown

MAX_DELAY = 600.0


class EchoKind(BotKind):
    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        reject_unknown(config, ("delay",))
        delay = number(config, "delay", 0, minimum=0, maximum=MAX_DELAY)
        return {"delay": delay} if delay else {}

    async def handle(self, request: Request, ctx: Context) -> str:
        delay = float(ctx.config.get("delay", 0))
        if delay:
            await ctx.status("thinking")
            await asyncio.sleep(delay)  # the configured thinking time is the point of this bot
        return request.text
