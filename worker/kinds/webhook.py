"""``webhook``: forwards each request to an HTTP endpoint and relays its answer.

The worker POSTs ``{"bot": id, "message": {id, text, from, ts}}`` to ``config.url``. An
``application/json`` answer ``{"text": ...}`` is the reply; an ``application/x-ndjson`` answer is
``{"delta": ...}`` lines (each the new piece only) ending with ``{"text": ...}``. A non-2xx
status, a malformed answer, a stream without the final text, or no byte for ``config.timeout``
seconds fail the attempt. Redirects are not followed: the configured URL is the only one fetched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from shared.broker.queue import Request
from worker.kinds.base import BotKind, Context, RequestFailed, number, reject_unknown

DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 600.0
MAX_ANSWER_BYTES = 1 << 20  # a reply is chat text; anything bigger is a broken endpoint
READ_BUFFER = 128 * 1024  # lines up to twice this are accepted
JSON = "application/json"
NDJSON = "application/x-ndjson"


def _url(config: Mapping[str, Any]) -> str:
    url = config.get("url")
    if not isinstance(url, str) or not url:
        raise ValueError("config.url is required: the http(s) URL to POST requests to")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("config.url must be an http:// or https:// URL with a host")
    return url


def _headers(config: Mapping[str, Any]) -> dict[str, str]:
    headers = config.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ValueError("config.headers must map header names to string values")
    return dict(headers)


def _text_of(line: Any, where: str) -> str:
    if not isinstance(line, dict) or not isinstance(line.get("text"), str):
        raise RequestFailed(f"the webhook's {where} has no string field text")
    return str(line["text"])


class WebhookKind(BotKind):
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None  # one pool for every webhook bot of the worker

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        reject_unknown(config, ("url", "timeout", "headers"))
        valid: dict[str, Any] = {"url": _url(config)}
        valid["timeout"] = number(config, "timeout", DEFAULT_TIMEOUT, minimum=0.1, maximum=MAX_TIMEOUT)
        headers = _headers(config)
        if headers:
            valid["headers"] = headers
        return valid

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(read_bufsize=READ_BUFFER)
        return self._session

    async def handle(self, request: Request, ctx: Context) -> str:
        timeout = float(ctx.config.get("timeout", DEFAULT_TIMEOUT))
        message = {"id": request.message_id, "text": request.text, "from": request.sender, "ts": request.ts}
        body = orjson.dumps({"bot": request.bot, "message": message})
        headers = {**ctx.config.get("headers", {}), "Content-Type": JSON, "Accept": f"{JSON}, {NDJSON}"}
        # sock_read bounds the silence between bytes, not the whole answer: a stream may go on
        limits = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        await ctx.status("executing")
        try:
            async with self._client().post(
                ctx.config["url"], data=body, headers=headers, timeout=limits, allow_redirects=False
            ) as response:
                if not 200 <= response.status < 300:
                    raise RequestFailed(f"the webhook answered HTTP {response.status}")
                if response.content_type == NDJSON:
                    return await self._stream(response, ctx)
                if response.content_type == JSON:
                    return await self._single(response)
                raise RequestFailed(f"the webhook answered with unsupported content type {response.content_type!r}")
        except TimeoutError:
            raise RequestFailed(f"the webhook sent nothing for {timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise RequestFailed(f"the webhook could not be reached: {exc.__class__.__name__}") from None

    @staticmethod
    async def _single(response: aiohttp.ClientResponse) -> str:
        raw = await response.content.read(MAX_ANSWER_BYTES + 1)
        if len(raw) > MAX_ANSWER_BYTES:
            raise RequestFailed("the webhook's answer is too large")
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise RequestFailed("the webhook's answer is not valid JSON") from None
        return _text_of(answer, "answer")

    @staticmethod
    async def _stream(response: aiohttp.ClientResponse, ctx: Context) -> str:
        received = 0
        for number_ in range(1, MAX_ANSWER_BYTES):
            try:
                line = await response.content.readline()
            except ValueError:  # longer than the read buffer allows
                raise RequestFailed("a line of the webhook's stream is too long") from None
            if not line:
                break
            received += len(line)
            if received > MAX_ANSWER_BYTES:
                raise RequestFailed("the webhook's answer is too large")
            if not line.strip():
                continue
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise RequestFailed(f"line {number_} of the webhook's stream is not valid JSON") from None
            if isinstance(item, dict) and isinstance(item.get("delta"), str) and "text" not in item:
                await ctx.delta(item["delta"])
                continue
            return _text_of(item, f"line {number_}")
        raise RequestFailed("the webhook's stream ended without the final text")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
