"""This node's pub/sub probe: a message to itself every few seconds, so a deaf link shows in readiness."""

from __future__ import annotations

import asyncio
import secrets
import time

import orjson

from gateway.announcer import Announcer
from shared import server_frames as sf
from shared.packets import BadPacket

PROBE_INTERVAL = 5.0


class Probe:
    def __init__(self, node_id: str, announcer: Announcer) -> None:
        self.room = "_probe." + "".join(c if c.isalnum() or c in "_.-" else "-" for c in node_id)[:50]
        self._announcer = announcer
        self._token = secrets.token_hex(8)  # tells this node's probes from anything else on its channel
        self.seen = time.monotonic()
        self._sent = 0  # sequence number of the last probe published
        self._answered = 0  # highest sequence number that came back
        self._wanted = 0  # not healthy until a probe of at least this number came back

    async def run(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            await self.send()

    async def send(self) -> None:
        self._sent += 1
        await self._announcer.publish(self.room, sf.encode(sf.Probe(self._token, self._sent)))

    def after_rebuild(self) -> None:
        """The link was rebuilt: it proves nothing until a probe sent from now on comes back."""
        self._wanted = self._sent + 1

    def returned(self, frame: bytes) -> None:
        """A message on the probe channel; raises BadPacket unless it is one of this node's probes."""
        try:
            probe = orjson.loads(frame)
        except orjson.JSONDecodeError:
            raise BadPacket("the probe is not JSON") from None
        seq = probe.get("seq") if isinstance(probe, dict) else None
        if not isinstance(seq, int) or probe.get("node") != self._token:
            raise BadPacket("not a probe this node sent")
        self.seen = time.monotonic()
        self._answered = max(self._answered, seq)

    def healthy(self) -> bool:
        """True while the probes come back, and one came back since the link was last rebuilt."""
        recent = time.monotonic() - self.seen < 3 * PROBE_INTERVAL
        return recent and self._answered >= self._wanted
