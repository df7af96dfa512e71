"""What a node does on its own: keep presence alive, and fill rooms after the pub/sub link was rebuilt."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.announcer import Announcer
from gateway.hub import Hub
from gateway.metrics import GatewayMetrics
from gateway.probe import Probe
from shared import server_frames as sf
from shared.broker import Broker
from shared.broker.base import BrokerUnavailable
from shared.errors import CloseCode
from shared.settings import Settings

log = logging.getLogger(__name__)


class Upkeep:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        hub: Hub,
        announcer: Announcer,
        probe: Probe,
        metrics: GatewayMetrics,
        spawn: Callable[[Coroutine[Any, Any, Any]], object],
    ) -> None:
        self._settings = settings
        self._broker = broker
        self._hub = hub
        self._announcer = announcer
        self._probe = probe
        self._metrics = metrics
        self._spawn = spawn

    async def keep_presence(self) -> None:
        """Refresh this node's presence entries and announce users whose node died."""
        interval = self._settings.presence_ttl / 3
        presence = self._broker.presence
        while True:
            await asyncio.sleep(interval)
            entries = [(room, c.user, c.id) for room, members in self._hub.rooms.items() for c in members]
            try:
                await presence.refresh(entries)
                for room in list(self._hub.rooms):
                    for user in await presence.expire(room):
                        await self._announcer.presence(room, user, "leave")
            except (BrokerUnavailable, OSError) as exc:
                log.warning("presence upkeep failed: %s", exc)

    def on_gap(self) -> None:
        """The pub/sub link was rebuilt: fill every local room from history before live events go on.

        Until a probe sent after this comes back the node is not ready: a link that was rebuilt
        proves nothing until a message has made the whole round trip on it.
        """
        self._metrics.pubsub_resets.inc()
        self._probe.after_rebuild()
        self._spawn(self._probe.send())
        for room in list(self._hub.rooms):
            self._spawn(self._catch_up(room))

    async def _catch_up(self, room: str) -> None:
        try:
            complete = await self._hub.catch_up(room, self._broker.history, self._settings.replay_max)
        except (BrokerUnavailable, OSError) as exc:
            log.warning("could not fill a gap in room history: %s", exc)
            complete = False
        if not complete:
            # a hole we cannot fill: the clients resume with since through a fresh connection
            for connection in list(self._hub.rooms.get(room, ())):
                connection.send(sf.encode(sf.Reconnect(int(random.uniform(0, 2000)))))
                connection.close(CloseCode.SERVICE_RESTART, "missed events; resume with since", "missed_events")
