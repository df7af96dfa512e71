"""The config of ``openai`` bots, checked where bots are created and where they are served.

The key is never part of it: ``api_key_env`` names the workers' environment variable that holds
it, and fields that look like a key are refused with a message saying where the key goes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from worker.kinds.base import number, reject_unknown

FIELDS = (
    "base_url",
    "model",
    "system_prompt",
    "api_key_env",
    "history",
    "timeout",
    "connect_timeout",
    "temperature",
    "max_tokens",
)
SECRET_WORDS = ("key", "token", "secret", "password", "auth", "bearer", "credential", "header")
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")  # upper case, as keys never are
OWN_SETTINGS = "CHAT_"  # the gateway's and workers' own settings (Redis URL, JWT secret) are never sent out
DEFAULT_HISTORY = 20
MAX_HISTORY = 100
DEFAULT_TIMEOUT = 60.0  # seconds without a byte: a local model may think long before its first token
MAX_TIMEOUT = 600.0
DEFAULT_CONNECT_TIMEOUT = 10.0
MAX_CONNECT_TIMEOUT = 60.0
MAX_MODEL = 256
MAX_SYSTEM_PROMPT = 32_000
MAX_URL = 2048
CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _refuse_secrets(config: Mapping[str, Any]) -> None:
    for name in config:
        if name not in FIELDS and any(word in str(name).lower() for word in SECRET_WORDS):
            raise ValueError(
                f"config.{name} is refused: a key never goes into a bot's config, which its members can read; "
                "put it in an environment variable of the workers and give that variable's name in config.api_key_env"
            )


def _base_url(config: Mapping[str, Any]) -> str:
    url = config.get("base_url")
    if not isinstance(url, str) or not url:
        raise ValueError("config.base_url is required: the http(s) URL of the API, such as https://api.openai.com/v1")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:
        raise ValueError("config.base_url is not a valid URL") from None
    if len(url) > MAX_URL or CONTROL.search(url) or " " in url:
        raise ValueError(f"config.base_url must be a URL of at most {MAX_URL} characters without spaces")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("config.base_url must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("config.base_url must not carry credentials: name the key's variable in config.api_key_env")
    if parts.query or parts.fragment:
        raise ValueError("config.base_url must not have a query or a fragment")
    base = url.rstrip("/")
    return base.removesuffix("/chat/completions")  # the endpoint's own URL names the same API


def _text(config: Mapping[str, Any], name: str, maximum: int, *, required: bool) -> str | None:
    if name not in config and not required:
        return None
    value = config.get(name)
    if not isinstance(value, str) or (required and not value):
        raise ValueError(f"config.{name} {'is required and ' if required else ''}must be a string")
    if len(value) > maximum:
        raise ValueError(f"config.{name} must be at most {maximum} characters")
    return value


def _key_env(config: Mapping[str, Any]) -> str | None:
    if "api_key_env" not in config:
        return None
    name = config["api_key_env"]
    if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
        raise ValueError(
            "config.api_key_env must be the NAME of the workers' environment variable that holds the key "
            "(upper-case letters, digits and _, such as OPENAI_API_KEY), never the key itself"
        )
    if name.startswith(OWN_SETTINGS):
        raise ValueError(f"config.api_key_env may not name one of the gateway's own settings ({OWN_SETTINGS}*)")
    return name


def _integer(config: Mapping[str, Any], name: str, *, minimum: int, maximum: int) -> int | None:
    if name not in config:
        return None
    value = config[name]
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON does not tell 32 from 32.0
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ValueError(f"config.{name} must be a whole number between {minimum} and {maximum}")
    return value


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The normalised config; raises ValueError naming what is wrong."""
    _refuse_secrets(config)
    reject_unknown(config, FIELDS)
    valid: dict[str, Any] = {"base_url": _base_url(config)}
    model = _text(config, "model", MAX_MODEL, required=True)
    if model is None or CONTROL.search(model):
        raise ValueError("config.model must be a model name without control characters")
    valid["model"] = model
    prompt = _text(config, "system_prompt", MAX_SYSTEM_PROMPT, required=False)
    if prompt:
        valid["system_prompt"] = prompt
    key_env = _key_env(config)
    if key_env is not None:
        valid["api_key_env"] = key_env
    history = _integer(config, "history", minimum=0, maximum=MAX_HISTORY)
    valid["history"] = DEFAULT_HISTORY if history is None else history
    valid["timeout"] = number(config, "timeout", DEFAULT_TIMEOUT, minimum=0.1, maximum=MAX_TIMEOUT)
    valid["connect_timeout"] = number(
        config, "connect_timeout", DEFAULT_CONNECT_TIMEOUT, minimum=0.1, maximum=MAX_CONNECT_TIMEOUT
    )
    if "temperature" in config:
        valid["temperature"] = number(config, "temperature", 1, minimum=0, maximum=2)
    max_tokens = _integer(config, "max_tokens", minimum=1, maximum=1_000_000)
    if max_tokens is not None:
        valid["max_tokens"] = max_tokens
    return valid
