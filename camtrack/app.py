"""The aiohttp application: the page, the signaling websocket, and their shutdown."""

from __future__ import annotations

import asyncio
import functools
import logging

from aiohttp import web

from .config import Config
from .encoder import EncoderSettings, SharedEncoder
from .ice import resolve_addresses, restrict_host_addresses
from .signaling import Session, websocket_handler
from .sources import make_source, resolve_auto
from .stream import CameraStream

logger = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
STREAM = web.AppKey("stream", CameraStream)
SESSIONS = web.AppKey("sessions", set)
ENCODER = web.AppKey("encoder", object)  # SharedEncoder, or None in per-viewer mode


def create_app(config: Config) -> web.Application:
    """Build the camtrack application for `config`; nothing runs until it is started."""
    app = web.Application()
    source = resolve_auto(config.source)
    stream = CameraStream(
        "default",
        functools.partial(make_source, source, config.width, config.height, config.fps),
        linger=config.linger,
    )
    encoder = None
    if config.encoder == "shared":
        encoder = SharedEncoder(stream, EncoderSettings(
            codec=config.codec, width=config.width, height=config.height, fps=config.fps,
            bitrate=config.bitrate, keyframe_interval=config.keyframe_interval))
    sessions: set[Session] = set()
    app[CONFIG] = config
    app[STREAM] = stream
    app[ENCODER] = encoder
    app[SESSIONS] = sessions

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(config.static_dir / "index.html", headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", index)
    app.router.add_get("/ws", websocket_handler(config, stream, encoder, sessions))
    app.router.add_static("/static/", config.static_dir)

    undo_ice: list = []

    async def on_startup(app: web.Application) -> None:
        if config.ice_addresses:
            addresses = resolve_addresses(config.ice_addresses)
            undo_ice.append(restrict_host_addresses(addresses))
            logger.info("offering ICE host candidates on %s only", ", ".join(addresses))

    async def on_shutdown(app: web.Application) -> None:
        ending = list(sessions)
        for session in ending:
            session.end("server shutting down")
        if ending:
            await asyncio.wait_for(asyncio.gather(*(s.closed() for s in ending), return_exceptions=True), 10)

    async def on_cleanup(app: web.Application) -> None:
        if encoder is not None:
            await encoder.close()
        await stream.close()
        while undo_ice:
            undo_ice.pop()()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
