"""The parts of aiohttp camtrack relies on that are not its public API (checked against aiohttp 3.14;
pyproject.toml pins that range). camtrack.connections uses them to give every HTTP connection a
deadline and to cap their number."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

#: (object, attribute) pairs overridden or read below
HOOKED: list[tuple[Any, str]] = [
    (RequestHandler, "_handle_request"),
    (web.AppRunner, "_make_server"),
]
#: attributes set in __init__, by class name (tests/test_hooks.py checks them on live objects)
INSTANCE_HOOKED: dict[str, list[str]] = {
    "RequestHandler": ["_task_handler"],
    "Server": ["_loop", "_kwargs"],
}


class ObservedRequestHandler(RequestHandler):
    """aiohttp's connection protocol, calling `request_began()` once a request's headers are in and
    `request_ended()` once its response is written (or its handler failed). Relies on:
    `RequestHandler._handle_request(request, start_time, request_handler)`, which aiohttp's
    `start()` awaits once per request, around the handler and the writing of its response."""

    def request_began(self) -> None:
        """A request's headers are in."""

    def request_ended(self) -> None:
        """The request's response is written, or it failed."""

    async def _handle_request(self, request: Any, start_time: Any, request_handler: Any) -> Any:
        self.request_began()
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            self.request_ended()


def handler_task(handler: RequestHandler) -> asyncio.Task[None] | None:
    """The task serving the connection's requests (cancelling it cancels the request's handler).
    Relies on: `RequestHandler._task_handler`."""
    return handler._task_handler


def server_loop(server: Server) -> asyncio.AbstractEventLoop:
    """The event loop `server` was made for. Relies on: `Server._loop`."""
    return server._loop


def server_kwargs(server: Server) -> dict[str, Any]:
    """The keyword arguments `server` hands each RequestHandler it makes (timeouts, limits, the
    access log). Relies on: `Server._kwargs`."""
    return server._kwargs


class ServerWrappingRunner(web.AppRunner):
    """An AppRunner whose `wrap_server(server)` may replace the Server aiohttp makes for the app.
    Relies on: `AppRunner._make_server()`, which `setup()` awaits once for the server it serves."""

    def wrap_server(self, server: Server) -> Server:
        return server

    async def _make_server(self) -> Server:
        return self.wrap_server(await super()._make_server())
