"""The HTTP API: the bot registry, start/stop, and messages without a WebSocket."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.appkeys import NODE
from gateway.bots import cancel_reply, change_bot_state
from gateway.handshake import authenticate, json_error
from gateway.node import Node
from gateway.principal import Principal
from gateway.session import user_ref
from shared import kinds, protocol
from shared.broker import BrokerUnavailable, InboxFull
from shared.broker.base import ClientId
from shared.control import Evict, Revoke
from shared.errors import ChatError, ErrorCode
from shared.models import MAX_BOT_NAME, Bot

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
PRINCIPAL = web.RequestKey("principal", Principal)
MAX_BODY = 64 * 1024
HISTORY_LIMIT = 1000
REVOCATION_TTL = 7 * 24 * 3600  # longer than any token we expect an identity provider to issue


def ok(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate /api requests and turn failures into JSON errors."""
    if (
        not request.path.startswith("/api/")
        or request.path.startswith("/api/dev/")
        or request.path == "/api/openapi.json"
    ):
        return await handler(request)
    node = request.app[NODE]
    principal = request[PRINCIPAL] = await authenticate(request, node.verifier, node.metrics, node.broker.revocations)
    if not node.http_limits.allow(principal.user, time.monotonic()):
        node.metrics.rate_limited.inc()
        return json_error(ErrorCode.RATE_LIMITED, "too many requests; slow down")
    try:
        return await handler(request)
    except ChatError as exc:
        return json_error(exc.code, exc.message)
    except BrokerUnavailable:
        node.metrics.redis_errors.inc()
        return json_error(ErrorCode.UNAVAILABLE, "storage is unavailable; retry")
    except web.HTTPException:
        raise
    except Exception:
        log.exception("API request failed", extra={"path": request.path})
        return json_error(ErrorCode.INTERNAL, "internal error")


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ChatError(ErrorCode.TOO_LARGE, f"the body is larger than {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ChatError(ErrorCode.TOO_LARGE, f"the body is larger than {MAX_BODY} bytes")
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise ChatError(ErrorCode.BAD_REQUEST, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ChatError(ErrorCode.BAD_REQUEST, "the body must be a JSON object")
    return body


async def _bot(request: web.Request, *, manage: bool = False) -> Bot:
    """The bot of the path; 404 when it does not exist, 403 when the caller may not use it."""
    node, principal = request.app[NODE], request[PRINCIPAL]
    bot_id = request.match_info["bot"]
    if not protocol.ROOM_ID.match(bot_id):
        raise ChatError(ErrorCode.NOT_FOUND, "no such bot")
    bot = await node.broker.registry.get(bot_id)
    if bot is None:
        raise ChatError(ErrorCode.NOT_FOUND, "no such bot")
    if manage:
        if not bot.may_manage(principal.user, is_admin=principal.is_admin):
            raise ChatError(ErrorCode.FORBIDDEN, "only the owner or an admin may do this")
    elif not bot.may_use(
        principal.user, is_admin=principal.is_admin, members=await node.broker.registry.members(bot_id)
    ):
        raise ChatError(ErrorCode.FORBIDDEN, "you may not use this bot")
    return bot


@routes.post("/api/bots")
async def create_bot(request: web.Request) -> web.Response:
    node, principal = request.app[NODE], request[PRINCIPAL]
    body = await _json_body(request)
    name, kind = body.get("name"), body.get("kind", "echo")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_BOT_NAME:
        raise ChatError(ErrorCode.BAD_REQUEST, f"name must be a string of 1-{MAX_BOT_NAME} characters")
    if not isinstance(kind, str):
        raise ChatError(ErrorCode.BAD_REQUEST, "kind must be a string")
    if kind in kinds.PRIVILEGED_KINDS and not principal.is_admin:
        raise ChatError(ErrorCode.FORBIDDEN, f"creating a {kind} bot needs the admin role")
    try:
        config = kinds.validate_config(kind, body.get("config"))
    except ValueError as exc:
        raise ChatError(ErrorCode.BAD_REQUEST, str(exc)) from None
    bot = Bot(
        id="b" + secrets.token_hex(6),
        name=name.strip(),
        kind=kind,
        owner=principal.user,
        config=config,
        created=int(time.time() * 1000),
    )
    await node.broker.registry.create(bot)
    return ok(bot.to_api(), 201)


@routes.get("/api/bots")
async def list_bots(request: web.Request) -> web.Response:
    node, principal = request.app[NODE], request[PRINCIPAL]
    bots = await node.broker.registry.list_for(principal.user, is_admin=principal.is_admin)
    return ok({"bots": [bot.to_api() for bot in bots]})


@routes.get("/api/bots/{bot}")
async def get_bot(request: web.Request) -> web.Response:
    return ok((await _bot(request)).to_api())


@routes.delete("/api/bots/{bot}")
async def delete_bot(request: web.Request) -> web.Response:
    bot = await _bot(request, manage=True)
    node = request.app[NODE]
    await node.broker.registry.delete(bot.id)
    await node.intake.send_control(Evict(bot.id))
    return web.Response(status=204)


@routes.put("/api/bots/{bot}/members/{user}")
async def add_member(request: web.Request) -> web.Response:
    bot = await _bot(request, manage=True)
    await request.app[NODE].broker.registry.add_member(bot.id, _user(request))
    return web.Response(status=204)


@routes.delete("/api/bots/{bot}/members/{user}")
async def remove_member(request: web.Request) -> web.Response:
    bot = await _bot(request, manage=True)
    user = _user(request)
    node = request.app[NODE]
    await node.broker.registry.remove_member(bot.id, user)
    if user != bot.owner:
        await node.intake.send_control(Evict(bot.id, user))
    return web.Response(status=204)


def _user(request: web.Request) -> str:
    user = request.match_info["user"]
    if not 0 < len(user) <= 128 or any(ord(c) < 32 for c in user):
        raise ChatError(ErrorCode.BAD_REQUEST, "user must be 1-128 printable characters")
    return user


@routes.post("/api/bots/{bot}/start")
async def start_bot(request: web.Request) -> web.Response:
    bot = await _bot(request, manage=True)
    return ok((await change_bot_state(request.app[NODE].broker.registry, bot, "start")).to_api(), 202)


@routes.post("/api/bots/{bot}/stop")
async def stop_bot(request: web.Request) -> web.Response:
    bot = await _bot(request, manage=True)
    return ok((await change_bot_state(request.app[NODE].broker.registry, bot, "stop")).to_api(), 202)


@routes.post("/api/bots/{bot}/messages")
async def post_message(request: web.Request) -> web.Response:
    node: Node = request.app[NODE]
    bot = await _bot(request)
    body = await _json_body(request)
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ChatError(ErrorCode.BAD_REQUEST, "text must be a non-empty string")
    if len(text) > node.settings.max_text_length:
        raise ChatError(ErrorCode.TOO_LARGE, f"text is longer than {node.settings.max_text_length} characters")
    principal = request[PRINCIPAL]
    client_id = protocol.validate_client_id(body.get("client_id"))
    tail = protocol.message_tail(bot.id, user_ref(principal), text, client_id=client_id)
    sent = ClientId(principal.user, client_id) if client_id is not None else None
    try:
        appended = await node.broker.history.append(bot.id, tail, request=True, client_id=sent)
    except InboxFull:
        raise ChatError(ErrorCode.RATE_LIMITED, "the bot has too many messages waiting; try later") from None
    node.metrics.messages_published.inc()
    answer = {"id": appended.id, "ts": appended.ts}
    if appended.queued:
        answer["queued"] = True
    return ok(answer, 202)


@routes.post("/api/bots/{bot}/messages/{message}/cancel")
async def cancel_message(request: web.Request) -> web.Response:
    """Stop the bot's reply to a message: for its sender, the bot's owner and admins."""
    node: Node = request.app[NODE]
    bot, principal = await _bot(request), request[PRINCIPAL]
    message_id = request.match_info["message"]
    if not protocol.MESSAGE_ID.match(message_id):
        raise ChatError(ErrorCode.NOT_FOUND, "no such message")
    info = await node.broker.replies.request(bot.id, message_id)
    if info.sender is None:
        raise ChatError(ErrorCode.NOT_FOUND, f"no message {message_id!r} for the bot")
    if not bot.may_cancel(principal.user, is_admin=principal.is_admin, sender=info.sender):
        raise ChatError(ErrorCode.FORBIDDEN, "only the sender, the bot's owner or an admin may stop this reply")
    if info.answered or info.cancelled:
        raise ChatError(ErrorCode.CONFLICT, "the reply already ended")
    await cancel_reply(node.broker, bot.id, message_id)
    return ok({"room": bot.id, "message": message_id}, 202)


@routes.get("/api/bots/{bot}/messages")
async def get_messages(request: web.Request) -> web.Response:
    node: Node = request.app[NODE]
    bot = await _bot(request)
    raw_limit = request.query.get("limit", "50")
    try:
        # digits only: int() also takes " 5", "+5", "5_0" and the digits of other scripts
        if not (raw_limit.isascii() and raw_limit.isdigit()):
            raise ValueError(raw_limit)
        limit = int(raw_limit)
    except ValueError:
        raise ChatError(ErrorCode.BAD_REQUEST, "limit must be an integer") from None
    if not 1 <= limit <= HISTORY_LIMIT:
        raise ChatError(ErrorCode.BAD_REQUEST, f"limit must be between 1 and {HISTORY_LIMIT}")
    try:
        since = protocol.validate_since(request.query.get("since"))
    except ChatError as exc:
        raise ChatError(ErrorCode.BAD_REQUEST, exc.message) from None
    history = node.broker.history
    page = await (history.read_range(bot.id, since, limit) if since else history.read_latest(bot.id, limit))
    messages = b",".join(frame for _, frame in page.entries)
    last_id = orjson.dumps(page.last_id)
    body = b'{"messages":[' + messages + b'],"last_id":' + last_id + b"}"
    return web.Response(body=body, content_type="application/json")


@routes.post("/api/admin/revoke/{user}")
async def revoke_user(request: web.Request) -> web.Response:
    """Refuse the user's current tokens and disconnect them on every node (admin only)."""
    node: Node = request.app[NODE]
    if not request[PRINCIPAL].is_admin:
        raise ChatError(ErrorCode.FORBIDDEN, "revoking needs the admin role")
    user = _user(request)
    await node.broker.revocations.revoke(user, time.time(), REVOCATION_TTL)
    await node.intake.send_control(Revoke(user))
    return web.Response(status=204)
