"""The error codes clients see, and the close codes that end a connection.

Hierarchy::

    ChatError                  a failure with a wire code; the connection stays open
    ├── ProtocolError          the client's frame is wrong (bad_request, too_large)
    └── (code given directly)  forbidden, not_found, rate_limited, unavailable, ...

Close codes below 4000 are WebSocket's own. In the 4000 range, 4001 (auth) and 4003 (forbidden)
mean "do not reconnect with the same credentials"; 4008 (policy / slow consumer) and 1012
(restart) mean "reconnect, resume with since".
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    RATE_LIMITED = "rate_limited"
    TOO_LARGE = "too_large"
    TOKEN_EXPIRED = "token_expired"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self]


_HTTP_STATUS = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class CloseCode(IntEnum):
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    AUTH = 4001
    FORBIDDEN = 4003
    POLICY = 4008


class ChatError(Exception):
    """A failure the client is told about with ``code`` and ``message``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ProtocolError(ChatError):
    """A client frame that cannot be accepted; ``ref`` is echoed when it could be read."""

    def __init__(self, message: str, *, ref: str | int | None = None, code: ErrorCode = ErrorCode.BAD_REQUEST) -> None:
        super().__init__(code, message)
        self.ref = ref
