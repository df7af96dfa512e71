"""``openai``: answers with a model behind any OpenAI-compatible chat-completions endpoint.

The worker POSTs ``{model, messages, stream: true}`` to ``{base_url}/chat/completions``: the
system prompt, the room's recent messages (the users' as ``user``, the bot's own as
``assistant``, oldest first) and the request last. Each piece of the server-sent-event stream
(``data: {json}`` lines, ``choices[0].delta.content``) goes to the room as a delta; ``data:
[DONE]`` ends it, and the pieces together are the reply. The key comes from the worker's
environment variable named in ``config.api_key_env``, never from the config, and no reason or log
line carries it. When the handler is cancelled the HTTP stream is closed at once, so the server
stops generating; the reply so far is the pieces already given to ``ctx.delta``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp.http_exceptions import LineTooLong

from shared.broker.queue import Request
from worker.kinds.base import BotKind, Context, RequestFailed
from worker.kinds.openai_config import (
    CONTROL,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HISTORY,
    DEFAULT_TIMEOUT,
    validate_config,
)

MAX_CONTEXT_CHARS = 200_000  # history beyond this (newest kept) is left out of the request
MAX_REPLY_CHARS = 1 << 20  # a reply is chat text; anything longer is a runaway model
MAX_STREAM_BYTES = 16 << 20  # the whole stream, JSON and keep-alive comments included
MAX_ERROR_BODY = 64 * 1024
MAX_DETAIL = 300  # characters of the server's own error message kept in a reason
READ_BUFFER = 128 * 1024  # stream lines up to twice this are accepted
JSON = "application/json"
EVENT_STREAM = "text/event-stream"


def _clean(text: str, key: str | None) -> str:
    """``text`` made fit for a reason: the key masked, control characters gone, bounded."""
    if key:
        text = text.replace(key, "***")
    text = " ".join(CONTROL.sub(" ", text).split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def _error_message(raw: bytes) -> str:
    """The message of an error body: OpenAI's ``{"error": {"message"}}`` or a common variant."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")
    if not isinstance(body, dict):
        return ""
    error = body.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    for value in (error, body.get("message"), body.get("detail")):
        if isinstance(value, str):
            return value
    return ""


async def _read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit and (chunk := await content.read(limit - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class _Stream:
    """Reads one server-sent-event answer; what went to ``ctx.delta`` is the reply so far."""

    def __init__(self, ctx: Context, key: str | None) -> None:
        self.ctx = ctx
        self.key = key  # masked in every reason built from what the server sent
        self.parts: list[str] = []  # the pieces given to ctx.delta, in order
        self.chars = 0
        self.events = 0
        self.finish_reason: str | None = None  # set by the chunk that ends the first choice

    async def read(self, response: aiohttp.ClientResponse) -> str:
        """The whole reply; raises RequestFailed when the stream is cut short or malformed."""
        data: list[bytes] = []  # the data lines of the event being read
        received = 0
        while raw := await self._line(response):
            received += len(raw)
            if received > MAX_STREAM_BYTES:
                raise RequestFailed("the model server's stream is too large", retryable=False)
            line = raw.rstrip(b"\r\n")
            if not line:  # a blank line ends the event
                if data and await self._event(b"\n".join(data)):
                    return self._reply()
                data.clear()
            elif not line.startswith(b":"):  # lines starting with ":" are keep-alive comments
                field, _, value = line.partition(b":")
                if field == b"data":  # event:, id: and retry: change nothing here
                    data.append(value.removeprefix(b" "))
        if data and await self._event(b"\n".join(data)):  # the last event lacked its blank line
            return self._reply()
        if self.finish_reason is None:
            raise RequestFailed(
                f"the model server's stream ended before [DONE], after {self.chars} characters of the reply"
            )
        return self._reply()  # the choice finished; only the [DONE] line is missing

    @staticmethod
    async def _line(response: aiohttp.ClientResponse) -> bytes:
        try:
            return await response.content.readline()
        except (LineTooLong, ValueError):  # longer than the read buffer allows (older aiohttp: ValueError)
            raise RequestFailed("a line of the model server's stream is too long", retryable=False) from None

    def _reply(self) -> str:
        if not self.chars:
            finish = f" (finish reason {_clean(self.finish_reason, self.key)})" if self.finish_reason else ""
            raise RequestFailed(f"the model's reply is empty{finish}", retryable=False)
        return "".join(self.parts)

    async def _event(self, payload: bytes) -> bool:
        """Handle one event's data; True when it is ``[DONE]``."""
        self.events += 1
        if payload.strip() == b"[DONE]":
            return True
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise RequestFailed(
                f"event {self.events} of the model server's stream is not valid JSON", retryable=False
            ) from None
        if not isinstance(chunk, dict):
            raise RequestFailed(f"event {self.events} of the model server's stream is not an object", retryable=False)
        if "error" in chunk:
            message = _clean(_error_message(payload), self.key) or "no message"
            raise RequestFailed(f"the model server reported an error mid-stream: {message}")
        piece = self._piece(chunk.get("choices"))
        if piece:
            if self.chars + len(piece) > MAX_REPLY_CHARS:
                raise RequestFailed(f"the reply is longer than {MAX_REPLY_CHARS} characters", retryable=False)
            await self.ctx.delta(piece)
            self.parts.append(piece)
            self.chars += len(piece)
        return False

    def _piece(self, choices: Any) -> str:
        """The new text of choice 0; records its finish reason."""
        if choices is None or choices == []:
            return ""  # a usage or content-filter chunk
        first = None
        if isinstance(choices, list):
            first = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)
        if first is None:
            raise RequestFailed(f"event {self.events} of the model server's stream has no choice 0", retryable=False)
        if isinstance(first.get("finish_reason"), str):
            self.finish_reason = first["finish_reason"]
        delta = first.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        return content if isinstance(content, str) else ""


async def _refusal(response: aiohttp.ClientResponse, key: str | None) -> RequestFailed:
    """The failure for a non-2xx answer, with the server's own message; 4xx but 408/429 are final."""
    message = _clean(_error_message(await _read_bounded(response.content, MAX_ERROR_BODY)), key)
    status = response.status
    reason = f"the model server answered HTTP {status}" + (f": {message}" if message else "")
    if 300 <= status < 400:
        reason += " (redirects are not followed)"
    return RequestFailed(reason, retryable=status in (408, 429) or status >= 500)


async def _single(response: aiohttp.ClientResponse, stream: _Stream) -> str:
    """A server that ignored ``stream``: one JSON completion, ``choices[0].message.content``."""
    raw = await _read_bounded(response.content, MAX_REPLY_CHARS * 4 + 1)
    try:
        body = orjson.loads(raw)
        content = body["choices"][0]["message"]["content"]
    except (orjson.JSONDecodeError, LookupError, TypeError):
        raise RequestFailed("the model server's answer is not a chat completion", retryable=False) from None
    if not isinstance(content, str) or not content:
        raise RequestFailed("the model's reply is empty", retryable=False)
    await stream.ctx.delta(content)
    return content


async def _answer(response: aiohttp.ClientResponse, stream: _Stream, key: str | None) -> str:
    if not 200 <= response.status < 300:
        raise await _refusal(response, key)
    if response.content_type == EVENT_STREAM:
        return await stream.read(response)
    if response.content_type == JSON:
        return await _single(response, stream)
    kind = _clean(response.content_type, key)
    raise RequestFailed(f"the model server answered with content type {kind!r}, not {EVENT_STREAM}", retryable=False)


async def _messages(request: Request, ctx: Context) -> list[dict[str, str]]:
    """System prompt, the room's recent messages (newest kept within the budget), the request last."""
    limit = int(ctx.config.get("history", DEFAULT_HISTORY))
    earlier = await ctx.history(limit) if limit else []
    said: list[dict[str, str]] = []
    budget = MAX_CONTEXT_CHARS - len(request.text)
    for frame in reversed(earlier):
        text, sender = frame.get("text"), frame.get("from")
        if not isinstance(text, str) or not text:
            continue
        budget -= len(text)
        if budget < 0:
            break
        own = isinstance(sender, dict) and sender.get("kind") == "bot" and sender.get("id") == ctx.bot.id
        said.append({"role": "assistant" if own else "user", "content": text})
    system = ctx.config.get("system_prompt")
    head = [{"role": "system", "content": system}] if system else []
    return [*head, *reversed(said), {"role": "user", "content": request.text}]


class OpenAIKind(BotKind):
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ  # where config.api_key_env is looked up
        self._session: aiohttp.ClientSession | None = None  # one pool for every openai bot of the worker

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        return validate_config(config)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(read_bufsize=READ_BUFFER)
        return self._session

    def _key(self, config: Mapping[str, Any]) -> str | None:
        name = config.get("api_key_env")
        if not name:
            return None
        key = self._environ.get(name, "").strip()
        if not key:
            raise RequestFailed(
                f"the worker's environment variable {name} (config.api_key_env) is unset or empty", retryable=False
            )
        if not key.isprintable() or any(c.isspace() for c in key):  # it would break the header
            raise RequestFailed(
                f"the worker's environment variable {name} holds spaces or control characters, not a key",
                retryable=False,
            )
        return key

    async def handle(self, request: Request, ctx: Context) -> str:
        config = ctx.config
        key = self._key(config)
        body: dict[str, Any] = {"model": config["model"], "messages": await _messages(request, ctx), "stream": True}
        for name in ("temperature", "max_tokens"):
            if name in config:
                body[name] = config[name]
        headers = {"Content-Type": JSON, "Accept": f"{EVENT_STREAM}, {JSON}"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        timeout = float(config.get("timeout", DEFAULT_TIMEOUT))
        connect = float(config.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT))
        # sock_read bounds the silence between bytes, not the whole answer: a reply may stream on
        limits = aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=timeout)
        stream = _Stream(ctx, key)
        await ctx.status("thinking")
        try:
            async with self._client().post(
                f"{config['base_url']}/chat/completions",
                data=orjson.dumps(body),
                headers=headers,
                timeout=limits,
                allow_redirects=False,
            ) as response:
                try:
                    return await _answer(response, stream, key)
                except BaseException:
                    # cancelled, failed or timed out: drop the connection at once instead of giving a
                    # half-read one back to the pool, so the server sees the client go and stops
                    response.close()
                    raise
        except aiohttp.ConnectionTimeoutError:
            raise RequestFailed(f"could not connect to the model server within {connect:g} s") from None
        except TimeoutError:
            raise RequestFailed(
                f"the model server sent nothing for {timeout:g} s, after {stream.chars} characters of the reply"
            ) from None
        except aiohttp.ClientPayloadError:
            raise RequestFailed(
                f"the model server's stream broke off after {stream.chars} characters of the reply"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            detail = _clean(exc.strerror or exc.__class__.__name__, key)
            raise RequestFailed(f"could not connect to the model server: {detail}") from None
        except aiohttp.ClientError as exc:
            raise RequestFailed(f"the model server could not be reached: {exc.__class__.__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
