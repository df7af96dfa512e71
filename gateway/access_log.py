"""The access log: one structured line per HTTP request, never with a token in it.

Tokens travel in ``?token=`` on the WebSocket handshake (browsers cannot set headers there), so
the query string is logged with every ``token`` value replaced, and headers are never logged.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlencode

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

REDACTED = "[redacted]"
SECRET_PARAMETERS = frozenset({"token", "access_token", "jwt"})


def safe_target(path: str, query_string: str) -> str:
    """The request target with every secret query parameter's value replaced."""
    if not query_string:
        return path
    pairs = [(k, REDACTED if k.lower() in SECRET_PARAMETERS else v) for k, v in parse_qsl(query_string, True)]
    return f"{path}?{urlencode(pairs, safe='[]')}"


class AccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self.logger.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status,
            extra={
                "remote": request.remote,
                "target": safe_target(request.path, request.query_string),
                "status": response.status,
                "duration_ms": round(time * 1000, 2),
                "bytes": response.body_length,
            },
        )
