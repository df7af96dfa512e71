"""The OpenAPI 3.1 description of the HTTP API, served at ``GET /api/openapi.json``.

The document is a plain dict built once per configuration: the longest message text and whether
the development login route exists are the only settings it depends on. It states exactly what
the handlers in :mod:`gateway.api` and :mod:`gateway.app` accept and answer, so that a schema
fuzzer can check the server against it and client generators get precise types.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
from aiohttp import web

from gateway.api import HISTORY_LIMIT, MAX_BODY
from gateway.appkeys import SETTINGS
from shared import kinds
from shared.errors import ErrorCode
from shared.models import MAX_BOT_NAME, BotStatus

OPENAPI_VERSION = "3.1.0"
MAX_MEMBER_NAME = 128  # gateway.api checks user ids in paths to this length
ROOM_ID_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
MESSAGE_ID_PATTERN = r"^[0-9]{1,15}-[0-9]{1,10}$"
CLIENT_ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"
NOT_BLANK = r"\S"  # at least one character that is not white space
PRINTABLE = r"^[^\x00-\x1f]+$"

JSON = "application/json"
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"query_token": []}]


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str, *codes: ErrorCode) -> dict[str, Any]:
    """A response whose body is the error object, with the codes this status can carry."""
    schema = {"allOf": [_ref("schemas", "Error"), {"properties": {"error": {"enum": [c.value for c in codes]}}}]}
    return _json(schema, description)


# -- schemas ----------------------------------------------------------------------------------

_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "enum": [code.value for code in ErrorCode], "description": "machine-readable"},
        "message": {"type": "string", "description": "for people, not programs"},
    },
}

_BOT = {
    "type": "object",
    "required": ["id", "name", "kind", "status", "error", "owner", "config", "created"],
    "properties": {
        "id": {"type": "string", "pattern": ROOM_ID_PATTERN, "description": "also the id of the bot's room"},
        "name": {"type": "string", "minLength": 1, "maxLength": MAX_BOT_NAME},
        "kind": {"type": "string"},
        "status": {"type": "string", "enum": [status.value for status in BotStatus]},
        "error": {"type": ["string", "null"], "description": "why the bot failed, when status is error"},
        "owner": {"type": "string"},
        "config": {"type": "object", "description": "the kind's settings, normalised"},
        "created": {"type": "integer", "description": "Unix milliseconds"},
    },
}

_SENDER = {
    "type": "object",
    "required": ["kind", "id"],
    "properties": {
        "kind": {"type": "string", "enum": ["user", "bot"]},
        "id": {"type": "string"},
        "name": {"type": "string"},
    },
}

_MESSAGE = {
    "type": "object",
    "required": ["type", "id", "ts", "room", "from", "text"],
    "properties": {
        "type": {"const": "message"},
        "id": {"type": "string", "pattern": MESSAGE_ID_PATTERN, "description": "the message's place in history"},
        "ts": {"type": "integer", "description": "Unix milliseconds, taken from the id"},
        "room": {"type": "string", "pattern": ROOM_ID_PATTERN},
        "from": _ref("schemas", "Sender"),
        "text": {"type": "string"},
        "reply_to": {"type": "string", "description": "the user message a bot's reply answers"},
        "client_id": {"type": "string", "description": "the sender's own id of the message"},
        "state": {"const": "cancelled", "description": "a bot reply stopped before it was complete"},
    },
}

_NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_BOT_NAME,
    "pattern": NOT_BLANK,
    "description": "surrounding white space is dropped",
}

# Config schemas of the built-in kinds; a kind installed as a plugin is described as a free object.
# A null config means the kind's defaults.
_ECHO_CONFIG = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        "delay": {"type": "number", "minimum": 0, "maximum": 600, "description": "seconds"},
        "pace": {
            "type": "number",
            "minimum": 0,
            "maximum": 10,
            "description": "seconds between the words of a streamed reply; 0 = not streamed",
        },
    },
}
_WEBHOOK_CONFIG = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        "url": {
            "type": "string",
            "pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9\-._~%]+(:[0-9]{1,5})?([/?#][!-~]*)?$",
            "description": "an http(s) URL with a host",
        },
        "timeout": {"type": "number", "minimum": 0.1, "maximum": 600, "description": "seconds without a byte"},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_PORT = r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?"
_OPENAI_CONFIG = {
    "type": "object",
    "additionalProperties": False,
    "required": ["base_url", "model"],
    "properties": {
        "base_url": {
            "type": "string",
            "maxLength": 2048,
            "pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9\-._~%]+" + _PORT + r'(/[!-"$->@-~]*)?$',
            "description": "the API's base URL, such as https://api.openai.com/v1; no credentials, query or fragment",
        },
        "model": {
            "type": "string",
            "maxLength": 256,
            "minLength": 1,
            "pattern": r"^[^\x00-\x1f\x7f]+$",
        },
        "system_prompt": {"type": "string", "maxLength": 32000},
        "api_key_env": {
            "type": "string",
            "pattern": "^(?!CHAT_)[A-Z_][A-Z0-9_]{0,127}$",
            "description": "the name of the workers' environment variable holding the key, never the key",
        },
        "history": {"type": "integer", "minimum": 0, "maximum": 100, "description": "earlier messages sent as context"},
        "timeout": {"type": "number", "minimum": 0.1, "maximum": 600, "description": "seconds without a byte"},
        "connect_timeout": {"type": "number", "minimum": 0.1, "maximum": 60, "description": "seconds"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1000000},
    },
}
_SEND_POLICY = {
    "enum": list(kinds.SEND_POLICIES),
    "default": "queue",
    "description": "a user's new message while the bot is still on an earlier one of theirs: queue it, "
    "answer only the latest of those not started, or stop the reply in progress",
}


def _with_policy(schema: dict[str, Any]) -> dict[str, Any]:
    """A kind's config schema with the fields every kind has."""
    return {**schema, "properties": {**schema["properties"], kinds.POLICY_FIELD: _SEND_POLICY}}


_KIND_CONFIGS = {
    "echo": _with_policy(_ECHO_CONFIG),
    "openai": _with_policy(_OPENAI_CONFIG),
    "webhook": _with_policy(_WEBHOOK_CONFIG),
}


def _new_bot(kind: str) -> dict[str, Any]:
    """The request body that creates a bot of one kind; ``echo`` is the default kind."""
    config = _KIND_CONFIGS.get(kind, {"type": ["object", "null"]})
    required = ["name"] if kind == "echo" else ["name", "kind"]
    body: dict[str, Any] = {
        "type": "object",
        "title": f"NewBot_{kind}",
        "required": required + (["config"] if "required" in config else []),
        "properties": {"name": _ref("schemas", "BotName"), "kind": {"const": kind}, "config": config},
    }
    if kind in kinds.PRIVILEGED_KINDS:
        body["description"] = "needs the admin role"
    return body


# -- operations -------------------------------------------------------------------------------

_BOT_PARAMETER = {
    "name": "bot",
    "in": "path",
    "required": True,
    "description": "the bot's id (a well-formed id that does not exist is 404)",
    "schema": {"type": "string", "pattern": ROOM_ID_PATTERN},
}
_USER_PARAMETER = {
    "name": "user",
    "in": "path",
    "required": True,
    "description": "a user id: 1-128 characters without control characters",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_MEMBER_NAME, "pattern": PRINTABLE},
}

_AUTHED = {
    "401": _ref("responses", "Unauthorized"),
    "429": _ref("responses", "RateLimited"),
    "500": _ref("responses", "Internal"),
}
_UNAVAILABLE = {"503": _ref("responses", "Unavailable")}
_BOT_ACCESS = {"403": _ref("responses", "Forbidden"), "404": _ref("responses", "NotFound")}
_BODY_ERRORS = {"400": _ref("responses", "BadRequest"), "413": _ref("responses", "TooLarge")}


def _operation(operation_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "security": SECURITY,
        **extra,
        "responses": {**responses, **_AUTHED, **_UNAVAILABLE},
    }


def _api_paths(max_text_length: int) -> dict[str, Any]:
    bot_json = _json(_ref("schemas", "Bot"), "the bot")
    return {
        "/api/bots": {
            "post": _operation(
                "createBot",
                "Create a bot owned by the caller",
                {
                    "201": _json(_ref("schemas", "Bot"), "the new bot"),
                    **_BODY_ERRORS,
                    "403": _ref("responses", "Forbidden"),
                },
                requestBody={"required": True, "content": {JSON: {"schema": _ref("schemas", "NewBot")}}},
            ),
            "get": _operation(
                "listBots",
                "The bots the caller owns or was added to (every bot for an admin), oldest first",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["bots"],
                            "properties": {"bots": {"type": "array", "items": _ref("schemas", "Bot")}},
                        },
                        "the bots",
                    )
                },
            ),
        },
        "/api/bots/{bot}": {
            "parameters": [_BOT_PARAMETER],
            "get": _operation("getBot", "One bot", {"200": bot_json, **_BOT_ACCESS}),
            "delete": _operation(
                "deleteBot",
                "Remove the bot with its members, history and queue (owner or admin)",
                {"204": {"description": "removed"}, **_BOT_ACCESS},
            ),
        },
        "/api/bots/{bot}/members/{user}": {
            "parameters": [_BOT_PARAMETER, _USER_PARAMETER],
            "put": _operation(
                "addMember",
                "Share the bot's room with a user (owner or admin; idempotent)",
                {"204": {"description": "shared"}, "400": _ref("responses", "BadRequest"), **_BOT_ACCESS},
            ),
            "delete": _operation(
                "removeMember",
                "Stop sharing the bot's room with a user (owner or admin; idempotent)",
                {"204": {"description": "no longer shared"}, "400": _ref("responses", "BadRequest"), **_BOT_ACCESS},
            ),
        },
        "/api/bots/{bot}/start": {
            "parameters": [_BOT_PARAMETER],
            "post": _operation(
                "startBot",
                "Ask a worker to start the bot (owner or admin)",
                {"202": _json(_ref("schemas", "Bot"), "the bot after the command"), **_BOT_ACCESS},
            ),
        },
        "/api/bots/{bot}/stop": {
            "parameters": [_BOT_PARAMETER],
            "post": _operation(
                "stopBot",
                "Stop the bot after the request in progress (owner or admin)",
                {"202": _json(_ref("schemas", "Bot"), "the bot after the command"), **_BOT_ACCESS},
            ),
        },
        "/api/bots/{bot}/messages": {
            "parameters": [_BOT_PARAMETER],
            "post": _operation(
                "postMessage",
                "Send a message to the bot's room without a WebSocket",
                {
                    "202": _json(
                        {
                            "type": "object",
                            "required": ["id", "ts"],
                            "properties": {
                                "id": {"type": "string", "pattern": MESSAGE_ID_PATTERN},
                                "ts": {"type": "integer"},
                                "queued": {"const": True, "description": "present when the bot is not running"},
                            },
                        },
                        "stored, sent to the room and queued for the bot",
                    ),
                    **_BODY_ERRORS,
                    **_BOT_ACCESS,
                },
                requestBody={
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["text"],
                                "properties": {
                                    "text": {
                                        "type": "string",
                                        "minLength": 1,
                                        "maxLength": max_text_length,
                                        "pattern": NOT_BLANK,
                                        "description": "longer than the limit is 413",
                                    },
                                    "client_id": {
                                        "type": "string",
                                        "pattern": CLIENT_ID_PATTERN,
                                        "description": "the client's own id: a resend with it within the "
                                        "client-id window is answered with the first message's id and stores nothing",
                                    },
                                },
                            }
                        }
                    },
                },
            ),
            "get": _operation(
                "getMessages",
                "History, oldest first: the newest `limit` messages, or the first `limit` after `since`",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["messages", "last_id"],
                            "properties": {
                                "messages": {"type": "array", "items": _ref("schemas", "Message")},
                                "last_id": {
                                    "type": ["string", "null"],
                                    "description": "the newest id in the room, null when it is empty",
                                },
                            },
                        },
                        "a page of history",
                    ),
                    "400": _ref("responses", "BadRequest"),
                    **_BOT_ACCESS,
                },
                parameters=[
                    {
                        "name": "since",
                        "in": "query",
                        "description": "a message id: return the messages after it",
                        "schema": {"type": "string", "pattern": MESSAGE_ID_PATTERN},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": HISTORY_LIMIT, "default": 50},
                    },
                ],
            ),
        },
        "/api/bots/{bot}/messages/{message}/cancel": {
            "parameters": [
                _BOT_PARAMETER,
                {
                    "name": "message",
                    "in": "path",
                    "required": True,
                    "description": "the id of the user message whose reply to stop",
                    "schema": {"type": "string", "pattern": MESSAGE_ID_PATTERN},
                },
            ],
            "post": _operation(
                "cancelReply",
                "Stop the bot's reply to a message (its sender, the bot's owner or an admin); "
                "the reply ends cancelled with the text written so far",
                {
                    "202": _json(
                        {
                            "type": "object",
                            "required": ["room", "message"],
                            "properties": {"room": {"type": "string"}, "message": {"type": "string"}},
                        },
                        "the workers were told",
                    ),
                    "409": _error("the reply already ended", ErrorCode.CONFLICT),
                    **_BOT_ACCESS,
                },
            ),
        },
        "/api/admin/revoke/{user}": {
            "parameters": [_USER_PARAMETER],
            "post": _operation(
                "revokeUser",
                "Refuse the user's tokens issued until now and disconnect the user on every node (admin only)",
                {
                    "204": {"description": "revoked"},
                    "400": _ref("responses", "BadRequest"),
                    "403": _error("the caller is not an admin", ErrorCode.FORBIDDEN),
                },
            ),
        },
    }


def _header(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": True, "schema": schema}


def _websocket_path() -> dict[str, Any]:
    """The WebSocket handshake: only its HTTP answers can be described here (frames: docs/protocol.md)."""
    return {
        "/ws": {
            "get": {
                "operationId": "websocket",
                "summary": "Open the chat WebSocket (protocol 1); the frames are described in docs/protocol.md",
                "security": SECURITY,
                "parameters": [
                    _header("Connection", {"type": "string", "pattern": "[Uu][Pp][Gg][Rr][Aa][Dd][Ee]"}),
                    _header("Upgrade", {"type": "string", "const": "websocket"}),
                    _header("Sec-WebSocket-Version", {"type": "string", "const": "13"}),
                    _header("Sec-WebSocket-Key", {"type": "string", "pattern": "^[A-Za-z0-9+/]{22}==$"}),
                ],
                "responses": {
                    "101": {"description": "upgraded: the server's first frame is welcome"},
                    "400": {
                        "description": "the request is not a WebSocket upgrade",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _ref("responses", "Unauthorized"),
                    "403": _error("the browser's Origin is not allowed", ErrorCode.FORBIDDEN),
                    "429": _error("the user has too many connections on this node", ErrorCode.RATE_LIMITED),
                    "503": _error(
                        "the node is shutting down, or storage or the identity provider cannot be reached",
                        ErrorCode.UNAVAILABLE,
                    ),
                },
            }
        }
    }


def _public_paths(dev_login: bool) -> dict[str, Any]:
    status = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process is alive",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status", "node"],
                            "properties": {"status": {"const": "ok"}, "node": {"type": "string"}},
                        },
                        "alive",
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "The node can serve: not draining, and its broker answers within 2 s",
                "responses": {
                    "200": _json({**status, "properties": {"status": {"const": "ready"}}}, "ready"),
                    "503": _json(
                        {**status, "properties": {"status": {"enum": ["draining", "broker unavailable"]}}},
                        "not ready: send new clients elsewhere",
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "text exposition format", "content": {"text/plain": {}}}},
            }
        },
        "/": {
            "get": {
                "operationId": "chatPage",
                "summary": "The chat page (it never contains a token)",
                "responses": {"200": {"description": "the page", "content": {"text/html": {}, "text/plain": {}}}},
            }
        },
        "/api/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "the OpenAPI description")},
            }
        },
    }
    if dev_login:
        paths["/api/dev/token"] = {
            "post": {
                "operationId": "devToken",
                "summary": "Mint a 12-hour token for any user name (development login only)",
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["user"],
                                "properties": {
                                    "user": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": NOT_BLANK}
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["token", "exp"],
                            "properties": {"token": {"type": "string"}, "exp": {"type": "integer"}},
                        },
                        "the token and its expiry (Unix seconds)",
                    ),
                    "400": _ref("responses", "BadRequest"),
                    "404": _error("the gateway has no HS256 secret to sign with", ErrorCode.NOT_FOUND),
                },
            }
        }
    return paths


def _components() -> dict[str, Any]:
    installed = kinds.available_kinds() or list(_KIND_CONFIGS)
    return {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            "query_token": {
                "type": "apiKey",
                "in": "query",
                "name": "token",
                "description": "the same JWT, for clients that cannot set headers (used only without the header)",
            },
        },
        "schemas": {
            "Error": _ERROR,
            "Bot": _BOT,
            "BotName": _NAME,
            "NewBot": {"oneOf": [_new_bot(kind) for kind in installed]},
            "Sender": _SENDER,
            "Message": _MESSAGE,
        },
        "responses": {
            "BadRequest": _error(
                "the body is not a JSON object, or a field or parameter is missing or wrong", ErrorCode.BAD_REQUEST
            ),
            "Unauthorized": _error(
                "no token, or a token that is malformed, badly signed, expired or for another audience",
                ErrorCode.UNAUTHORIZED,
                ErrorCode.TOKEN_EXPIRED,
            ),
            "Forbidden": _error("the bot exists but the caller may not use or manage it", ErrorCode.FORBIDDEN),
            "NotFound": _error("there is no such bot", ErrorCode.NOT_FOUND),
            "TooLarge": _error(f"the body is over {MAX_BODY} bytes, or the text is too long", ErrorCode.TOO_LARGE),
            "Unavailable": _error(
                "storage or the identity provider cannot be reached; retry with backoff", ErrorCode.UNAVAILABLE
            ),
            "RateLimited": _error(
                "the caller sent more requests than CHAT_HTTP_PER_SECOND allows; retry later", ErrorCode.RATE_LIMITED
            ),
            "Internal": _error("an unexpected failure (a bug: please report it)", ErrorCode.INTERNAL),
        },
    }


@cache
def build_spec(max_text_length: int = 4000, dev_login: bool = False) -> dict[str, Any]:
    """The OpenAPI document for a gateway with these settings (cached: build once, reuse)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Chat gateway HTTP API",
            "version": "1",
            "description": (
                "Bots, their rooms and their history over HTTP, next to the WebSocket protocol at /ws. "
                "Every route under /api/ takes the caller's JWT. Errors are JSON objects "
                '`{"error": code, "message": text}`; paths or methods that do not exist get the '
                "web server's plain-text 404 / 405."
            ),
        },
        "paths": {**_api_paths(max_text_length), **_websocket_path(), **_public_paths(dev_login)},
        "components": _components(),
    }


@cache
def _encoded(max_text_length: int, dev_login: bool) -> bytes:
    return orjson.dumps(build_spec(max_text_length, dev_login))


async def openapi_json(request: web.Request) -> web.Response:
    """``GET /api/openapi.json``: the description of this gateway's API (no authentication)."""
    settings = request.app[SETTINGS]
    body = _encoded(settings.max_text_length, settings.dev_login)
    return web.Response(body=body, content_type=JSON, headers={"Cache-Control": "no-cache"})
