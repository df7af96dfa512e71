"""Typed application state keys (kept apart so routes and app can both import them)."""

from __future__ import annotations

from aiohttp import web

from gateway.metrics import GatewayMetrics
from gateway.node import Node
from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
NODE = web.AppKey("node", Node)
METRICS = web.AppKey("metrics", GatewayMetrics)
