"""The aiohttp application: the page, the signaling websocket, and their shutdown."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading

from aiohttp import web

from .access import is_loopback
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

    async def healthz(request: web.Request) -> web.Response:
        """Source states and viewer counts; 503 while a watched source is down."""
        watched = bool(stream.consumers)
        state = stream.state
        body = {
            "status": "down" if watched and state == "retrying" else "ok",
            "viewers": len(sessions),
            "peers": sum(1 for s in sessions if s.pc is not None),
            "sources": {
                stream.name: {
                    "state": state,
                    "watched": watched,
                    "opens": stream.opens,
                    "encoder": None if encoder is None else {
                        "running": encoder.running,
                        "viewers": len(encoder.consumers),
                        "frames": encoder.stats.frames,
                        "keyframes": encoder.stats.keyframes,
                    },
                },
            },
            "threads": threading.active_count(),
            "tasks": len(asyncio.all_tasks()),
        }
        return web.json_response(body, status=503 if body["status"] == "down" else 200)

    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ws", websocket_handler(config, stream, encoder, sessions))
    app.router.add_static("/static/", config.static_dir)

    undo_ice: list = []

    async def on_startup(app: web.Application) -> None:
        if not config.token and not is_loopback(config.host):
            logger.warning("no --token: anyone who can reach %s:%d can watch", config.host, config.port)
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
