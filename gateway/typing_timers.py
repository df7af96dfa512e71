"""Server-side expiry of typing: a user who stops refreshing "typing" is announced as stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class TypingTimers:
    """One timer per (room, user) typing on this node; it fires ``on_expire(room, user)``."""

    def __init__(self, timeout: float, on_expire: Callable[[str, str], None]) -> None:
        self.timeout = timeout
        self._on_expire = on_expire
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}

    def started(self, room: str, user: str) -> None:
        key = (room, user)
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(self.timeout, self._expire, key)

    def stopped(self, room: str, user: str) -> bool:
        """Forget the timer; True when the user was typing."""
        timer = self._timers.pop((room, user), None)
        if timer is None:
            return False
        timer.cancel()
        return True

    def _expire(self, key: tuple[str, str]) -> None:
        if self._timers.pop(key, None) is not None:
            self._on_expire(*key)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
