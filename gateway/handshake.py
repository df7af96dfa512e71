"""Checks made before a WebSocket or API request is served: Origin and bearer token."""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from gateway.auth import TokenVerifier, token_from_request
from gateway.metrics import GatewayMetrics
from gateway.principal import AuthError, Principal
from shared import protocol
from shared.broker.base import BrokerUnavailable, Revocations
from shared.errors import ErrorCode
from shared.settings import Settings


def json_error(code: ErrorCode, message: str, *, status: int | None = None) -> web.Response:
    """An HTTP error answer: ``{"error": code, "message": ...}`` with the code's status."""
    body = protocol.encode({"error": code.value, "message": message})
    return web.Response(body=body, status=status or code.http_status, content_type="application/json")


def origin_allowed(origin: str | None, host: str | None, settings: Settings) -> bool:
    """Browsers send Origin; it must be listed, or equal the request's Host when nothing is listed.

    Requests without Origin come from non-browser clients, which the token alone authenticates.
    """
    if origin is None:
        return True
    allowed = settings.allowed_origins
    if "*" in allowed:
        return True
    if allowed:
        return origin.rstrip("/") in allowed
    return urlsplit(origin).netloc.lower() == (host or "").lower()


async def verify_unrevoked(token: str | None, verifier: TokenVerifier, revocations: Revocations) -> Principal:
    """Verify a token and refuse it when its user was revoked after it was issued."""
    principal = await verifier.verify(token)
    revoked_at = await revocations.revoked_at(principal.user)
    if revoked_at is not None and (principal.issued is None or principal.issued <= revoked_at):
        raise AuthError("revoked", "this user's tokens were revoked; sign in again")
    return principal


async def authenticate(
    request: web.Request, verifier: TokenVerifier, metrics: GatewayMetrics, revocations: Revocations
) -> Principal:
    """The caller's principal; raises an HTTP 401 answer (never an upgrade) when the token is bad."""
    token = token_from_request(request.query.get("token"), request.headers.get("Authorization"))
    try:
        return await verify_unrevoked(token, verifier, revocations)
    except BrokerUnavailable:
        body = protocol.encode({"error": ErrorCode.UNAVAILABLE.value, "message": "storage is unavailable"}).decode()
        raise web.HTTPServiceUnavailable(text=body, content_type="application/json") from None
    except AuthError as exc:
        metrics.auth_failures.labels(exc.reason).inc()
        if exc.reason == "keys_unavailable":  # the identity provider is down: retrying later can work
            body = protocol.encode({"error": ErrorCode.UNAVAILABLE.value, "message": exc.message}).decode()
            raise web.HTTPServiceUnavailable(text=body, content_type="application/json") from None
        code = ErrorCode.TOKEN_EXPIRED if exc.reason == "expired" else ErrorCode.UNAUTHORIZED
        body = protocol.encode({"error": code.value, "message": exc.message}).decode()
        raise web.HTTPUnauthorized(text=body, content_type="application/json") from None
