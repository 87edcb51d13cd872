"""Shared fixtures: a camtrack server on loopback and ICE kept on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from camtrack import Config, create_app
from camtrack.connections import make_runner
from camtrack.outputs.webrtc.ice import restrict_host_addresses

Server = tuple[str, web.Application]


@pytest.fixture
def loopback_ice():
    """Every peer connection in this process gathers 127.0.0.1 only: no packet leaves loopback."""
    undo = restrict_host_addresses(["127.0.0.1"])
    yield
    undo()


@pytest.fixture
async def serve(loopback_ice) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """Start camtrack apps on 127.0.0.1 with a free port; returns (ws URL, app)."""
    runners: list[web.AppRunner] = []

    async def start(**settings) -> Server:
        settings.setdefault("source", "pattern")
        settings.setdefault("linger", 0.5)
        settings.setdefault("host", "127.0.0.1")
        # a socket per peer unless a test asks for the shared port (8555 may be another run's)
        settings.setdefault("webrtc_port", 0)
        # admission from measured load is tested in test_load.py; elsewhere a busy test machine
        # (Chromium, other servers) must not turn viewers away
        for check in ("max_loop_lag", "send_budget", "max_picture_age", "max_cpu"):
            settings.setdefault(check, 0)
        config = Config(port=0, **settings)
        app = create_app(config)
        runner = make_runner(app, config)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/ws", app

    yield start
    for runner in runners:
        await asyncio.wait_for(runner.cleanup(), 30)


async def eventually(predicate: Callable[[], bool], timeout: float = 15.0, interval: float = 0.05) -> None:
    """Wait until `predicate()` is true, failing after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
