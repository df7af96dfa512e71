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
