"""``shout``: an example bot kind that answers in capitals, streaming one word at a time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.kinds import BotKind, Context, RequestFailed
from worker.kinds.base import reject_unknown

MAX_SUFFIX = 10


class ShoutKind(BotKind):
    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        # runs in the gateway when a bot is created: refuse bad configs with a clear message
        reject_unknown(config, ("suffix",))
        suffix = config.get("suffix", "!")
        if not isinstance(suffix, str) or len(suffix) > MAX_SUFFIX:
            raise ValueError(f"config.suffix must be a string of at most {MAX_SUFFIX} characters")
        return {"suffix": suffix}

    async def handle(self, request: Any, ctx: Context) -> str:
        # runs in a worker, one request of a bot at a time; ctx.config is what validate_config returned
        if not request.text.strip():
            raise RequestFailed("nothing to shout", retryable=False)
        await ctx.status("thinking", "taking a deep breath")
        words = request.text.upper().split()
        for index, word in enumerate(words):
            await ctx.delta(word if index == 0 else f" {word}")
        return " ".join(words) + ctx.config["suffix"]
