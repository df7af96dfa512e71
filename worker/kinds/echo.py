"""``echo``: replies with the text it got, after ``config.delay`` seconds of thinking.

With ``config.pace`` it streams the reply word by word, ``pace`` seconds apart, the way a
language model streams tokens: a bot to try streaming, reloads mid-reply and Stop with.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

from shared.broker.queue import Request
from worker.kinds.base import BotKind, Context, number, reject_unknown

MAX_DELAY = 600.0
MAX_PACE = 10.0


class EchoKind(BotKind):
    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        reject_unknown(config, ("delay", "pace"))
        delay = number(config, "delay", 0, minimum=0, maximum=MAX_DELAY)
        pace = number(config, "pace", 0, minimum=0, maximum=MAX_PACE)
        return {key: value for key, value in (("delay", delay), ("pace", pace)) if value}

    async def handle(self, request: Request, ctx: Context) -> str:
        delay = float(ctx.config.get("delay", 0))
        if delay:
            await ctx.status("thinking")
            await asyncio.sleep(delay)  # the configured thinking time is the point of this bot
        pace = float(ctx.config.get("pace", 0))
        if pace:
            for word in re.findall(r"\S+\s*|\s+", request.text):
                await ctx.delta(word)
                await asyncio.sleep(pace)
        return request.text
