"""Browser fixtures: single-process gateways, a two-node cluster behind nginx, and headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.test_loopback import loopback, read_topology, script_env
from tests.procs import GatewayNode

async_api = pytest.importorskip("playwright.async_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
HAVE_CHROMIUM = CHROMIUM.exists()


@dataclass
class Tab:
    """A page plus what it printed: console lines and uncaught errors."""

    page: async_api.Page
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayNode]:
    """``python -m gateway`` without Redis (in-memory broker, built-in workers) and with dev sign-in."""
    node = GatewayNode(None, name="browser", CHAT_DEV_LOGIN="true")
    try:
        yield node
    finally:
        node.terminate()


@pytest.fixture(scope="module")
def gateway_without_dev_login() -> Iterator[GatewayNode]:
    """The same gateway as an operator would run it: /api/dev/token answers 404."""
    node = GatewayNode(None, name="browser-nodev")
    try:
        yield node
    finally:
        node.terminate()


@pytest.fixture
async def browser() -> AsyncIterator[async_api.Browser]:
    """Headless Chromium from the system; never a downloaded browser."""
    if not HAVE_CHROMIUM:
        pytest.skip(f"{CHROMIUM} is not installed")
    async with async_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def new_tab(browser):
    """Open pages in fresh contexts (separate storage); fails the test on uncaught page errors."""
    tabs: list[Tab] = []

    async def make() -> Tab:
        context = await browser.new_context(viewport={"width": 1100, "height": 720})
        tab = Tab(await context.new_page())
        tab.page.set_default_timeout(15_000)
        tab.page.on("console", lambda msg: tab.console.append(f"{msg.type}: {msg.text}"))
        tab.page.on("pageerror", lambda exc: tab.errors.append(str(exc)))
        tabs.append(tab)
        return tab

    yield make
    for tab in tabs:
        with contextlib.suppress(Exception):
            await tab.page.context.close()
    errors = [e for tab in tabs for e in tab.errors]
    assert not errors, f"uncaught errors in the page: {errors}"


@dataclass(frozen=True)
class Topology:
    """A running deploy/loopback.sh topology: nginx in front of gateway nodes, Redis and workers."""

    run_dir: Path
    lb_url: str
    secret: str  # the HS256 key every node verifies tokens with
    gateway_pids: dict[str, int]  # node id (as in `welcome`) -> PID


@pytest.fixture
async def nginx_cluster(tmp_path: Path) -> AsyncIterator[Topology]:
    """deploy/loopback.sh with two gateway nodes and one worker behind nginx; stopped at the end."""
    env = script_env()
    run_dir = tmp_path / "loopback"
    try:
        result = await asyncio.to_thread(
            loopback, "start", "--gateways", "2", "--workers", "1", "--dir", str(run_dir), env=env
        )
        assert result.returncode == 0, f"loopback start failed:\n{result.stdout}\n{result.stderr}"
        topology = read_topology(run_dir)
        pids = {path.stem: int(path.read_text()) for path in (run_dir / "pids").glob("gateway-*.pid")}
        yield Topology(
            run_dir=run_dir,
            lb_url=topology["LOOPBACK_LB_URL"],
            secret=topology.get("CHAT_JWT_SECRET", env["CHAT_JWT_SECRET"]),
            gateway_pids=pids,
        )
    finally:
        await asyncio.to_thread(loopback, "stop", "--dir", str(run_dir), env=env)
