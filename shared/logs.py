"""Logging setup for gateway and worker: one JSON object per line, carrying the node id."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

# attributes every LogRecord has; anything else was passed with ``extra=`` and is logged as a field
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": self.node,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                event[key] = value
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(event, default=str).decode()


def configure(level: str, fmt: str, node: str) -> None:
    """Send every log line to stderr in the chosen format; called once by each entry point."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(node))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {node} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log would print query strings, and with them tokens; ours leaves them out
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class Throttled:
    """A logger's warnings, at most one per key every ``interval`` seconds, each saying how many were held back.

    For failures that outside input can repeat at will (junk on a pub/sub channel): logging each
    one would let the input flood the logs.
    """

    def __init__(self, logger: logging.Logger, interval: float, clock: Any = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock  # injectable so tests need not wait
        self._last: dict[str, float] = {}  # key -> when its last line was logged
        self._held: dict[str, int] = {}  # key -> lines not logged since then

    def warning(self, key: str, message: str, *args: Any, exc_info: Any = None) -> bool:
        """Log ``message % args`` unless ``key`` was logged less than ``interval`` ago; True if it was logged."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        if len(self._last) > 1000:  # keys come from outside: keep the table bounded
            self._last.clear()
            self._held.clear()
        held = self._held.pop(key, 0)
        self._last[key] = now
        suffix = f" ({held} more like it not logged)" if held else ""
        self.logger.warning(message + suffix, *args, exc_info=exc_info)
        return True
