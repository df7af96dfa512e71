"""What a joining client gets after ``joined``, in order and once each. Pure; no I/O.

While a join reads history the room's live events wait in the session (they were subscribed
to first, so none is missed). They are merged here with what the reads returned: missed
messages from history, then the replies in flight as they stand, then the live events that
came after both. A live message already replayed, or a delta already inside a reply's
snapshot, is dropped; everything newer goes out.
"""

from __future__ import annotations

from gateway import effects as fx
from shared import protocol
from shared import server_frames as sf
from shared.models import ReplyInFlight
from shared.packets import StreamPosition

# a live event that arrived during a join: (message id or "", a delta's position or None, framed bytes)
Waiting = tuple[str, StreamPosition | None, bytes]


def merged(
    room: str,
    since: str | None,
    replay: list[tuple[str, bytes]],
    streams: list[ReplyInFlight],
    waiting: list[Waiting],
) -> list[fx.Effect]:
    effects: list[fx.Effect] = [fx.Send(frame) for _, frame in replay]
    snapshots: dict[str, StreamPosition] = {}
    for stream in streams:
        at = stream.position
        snapshots[at.reply_to] = at
        effects.append(fx.Send(sf.encode(sf.Stream(room, at.reply_to, stream.text, at.attempt, at.seq))))
    newest = replay[-1][0] if replay else since
    for message_id, position, framed in waiting:
        if message_id and newest is not None and not protocol.id_newer(message_id, newest):
            continue  # already replayed from history
        if position is not None:
            snapshot = snapshots.get(position.reply_to)
            if snapshot is not None and not position.after(snapshot):
                continue  # already inside the snapshot
        effects.append(fx.Write(framed))
    return effects
