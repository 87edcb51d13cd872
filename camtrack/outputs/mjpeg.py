"""MJPEG and snapshots: JPEGs of a camera for clients with no WebRTC (VLC, Home Assistant, curl).

Each camera has one JPEG encoder per quality, running off the event loop only while someone
watches; every frame is encoded once however many clients read it, and a slow client skips
to the newest JPEG instead of queueing.

What a client can ask for is bounded: a rate of at least MIN_FPS (so a client that left is noticed
within a frame or POLL seconds, whichever is sooner: aiohttp does not cancel a handler whose client
went), a quality snapped to a few tiers (each one an encoder), and a client that takes nothing for
STALL_TIMEOUT seconds is cut off rather than held.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from aiohttp import web

from ..access import find_camera
from ..config import Config
from ..connections import gone
from ..logs import ClientLog
from ..media.feeds import FeedClosed, Transport
from ..media.jpeg import Jpeg
from ..media.ring import Read
from .directory import Camera, Cameras

logger = logging.getLogger(__name__)
log = ClientLog(logger)

BOUNDARY = "camtrack-frame"
#: the kernel's send buffer for an MJPEG client: a few frames, so a slow client's backlog
#: (and so its delay) stays short and it skips ahead instead
SEND_BUFFER = 128 * 1024
#: the lowest ?fps= a client may ask for: a frame at least every 5 s
MIN_FPS = 0.2
#: seconds between checks that the client is still there while no frame is due
POLL = 1.0
#: a client whose socket has taken nothing for this many seconds is cut off
STALL_TIMEOUT = 8.0
#: the JPEG qualities served (and --jpeg-quality): a ?quality= is snapped to the nearest, so
#: clients cannot make one encoder each
QUALITY_TIERS = (25, 50, 75, 95)


class MjpegClient:
    """One client of `/mjpeg`: counted as a viewer of its camera while it reads."""

    transport = Transport.MJPEG

    def __init__(self, camera: Camera, remote: str) -> None:
        self.camera = camera
        self.remote = remote
        self.sent = 0
        self.skipped = 0
        self.reason: str | None = None
        self._stop = asyncio.Event()
        self._done = asyncio.Event()

    def end(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._stop.set()

    async def closed(self) -> None:
        await self._done.wait()


def quality_of(request: web.Request, default: int) -> int:
    """The ?quality= asked for, snapped to the nearest of QUALITY_TIERS and `default`."""
    text = request.query.get("quality")
    if text is None:
        return default
    try:
        quality = int(text)
    except ValueError:
        raise web.HTTPBadRequest(text="quality must be a whole number from 1 to 100\n") from None
    if not 1 <= quality <= 100:
        raise web.HTTPBadRequest(text="quality must be a whole number from 1 to 100\n")
    return snap_quality(quality, default)


def snap_quality(quality: int, default: int) -> int:
    # the default wins a tie: it is the encoder most likely running already
    return min((default, *QUALITY_TIERS), key=lambda tier: abs(tier - quality))


def add_routes(app: web.Application, config: Config, cameras: Cameras) -> None:
    """`/mjpeg`, `/snapshot.jpg` (the first camera) and the same under `/cameras/{name}/`."""

    def camera_of(request: web.Request) -> Camera:
        return find_camera(request, cameras, config.token, request.match_info.get("name"))

    async def mjpeg(request: web.Request) -> web.StreamResponse:
        camera = camera_of(request)
        encoder = camera.jpeg.at(quality_of(request, config.jpeg_quality))
        try:
            fps = min(float(request.query.get("fps", config.mjpeg_fps)), config.mjpeg_fps)
        except ValueError:
            raise web.HTTPBadRequest(text="fps must be a number\n") from None
        if not fps >= MIN_FPS:  # NaN too
            raise web.HTTPBadRequest(text=f"fps must be at least {MIN_FPS:g}\n")
        client = MjpegClient(camera, request.remote or "?")
        if (refused := cameras.admission(camera) or cameras.admit(camera, client)) is not None:
            log.warning(client.remote, "refused mjpeg viewer %s of %s: %s", client.remote, camera.name, refused.text)
            raise web.HTTPServiceUnavailable(text=f"{refused.text}\n", headers={"Retry-After": "10"})
        meter = camera.meters[Transport.MJPEG]
        response = web.StreamResponse(headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            "Cache-Control": "no-cache, no-store", "Pragma": "no-cache",
        })
        log.info(client.remote, "mjpeg viewer %s connected to %s", client.remote, camera.name)
        encoder.attach(client)
        stop = asyncio.ensure_future(client._stop.wait())
        getting: asyncio.Future[Read[Jpeg]] | None = None
        try:
            await response.prepare(request)
            sock = request.transport.get_extra_info("socket") if request.transport else None
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            seq, last = 0, 0.0
            while not client._stop.is_set():
                if gone(request):
                    client.end("went away")
                    break
                wait = last + 1.0 / fps - time.monotonic()
                if wait > 0:
                    await asyncio.wait([stop], timeout=min(wait, POLL))
                    continue
                if getting is None:
                    getting = asyncio.ensure_future(encoder.next_jpeg(seq))
                waiting: list[asyncio.Future[Any]] = [getting, stop]
                await asyncio.wait(waiting, timeout=POLL, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    continue  # stopped, gone, or no picture yet: the loop's checks say which
                read, getting = getting.result(), None
                jpeg = read.item
                if seq:
                    client.skipped += read.skipped
                seq, last = jpeg.seq, time.monotonic()
                part = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg.data)}\r\n"
                        f"X-Timestamp: {jpeg.captured:.3f}\r\n\r\n").encode()
                try:
                    # the write waits while the socket is full: that long without progress is a stall
                    await asyncio.wait_for(response.write(part + jpeg.data + b"\r\n"), STALL_TIMEOUT)
                except TimeoutError:
                    client.end(f"stalled: took nothing for {STALL_TIMEOUT:g} s")
                    if request.transport is not None:
                        request.transport.abort()  # what is queued for it is dropped, not sent
                    break
                client.sent += 1
                meter.sent(len(jpeg.data))
                meter.wire_age.observe(max(0.0, time.time() - jpeg.captured))
            client.end(client.reason or "server closed the stream")
        except (ConnectionError, FeedClosed) as exc:
            client.end(client.reason or f"went away ({type(exc).__name__})")
        except asyncio.CancelledError:
            client.end(client.reason or "went away")
            raise
        finally:
            stop.cancel()
            if getting is not None:
                getting.cancel()
            encoder.detach(client)
            cameras.leave(camera, client)
            log.info(client.remote, "mjpeg viewer %s of %s left: %s (%d frames, %d skipped)", client.remote,
                     camera.name, client.reason, client.sent, client.skipped)
            client._done.set()
        return response

    async def snapshot(request: web.Request) -> web.Response:
        camera = camera_of(request)
        encoder = camera.jpeg.at(quality_of(request, config.jpeg_quality))
        taker = object()
        encoder.attach(taker)
        try:
            jpeg = (await asyncio.wait_for(encoder.next_jpeg(0), 15)).item
        except (TimeoutError, FeedClosed):
            raise web.HTTPServiceUnavailable(text=f"camera {camera.name} gave no picture\n") from None
        finally:
            encoder.detach(taker)
        return web.Response(body=jpeg.data, content_type="image/jpeg", headers={
            "Cache-Control": "no-cache, no-store",
            "Content-Disposition": f'inline; filename="{camera.name}-{time.strftime("%Y%m%d-%H%M%S")}.jpg"',
            "X-Timestamp": f"{jpeg.captured:.3f}",
        })

    for prefix in ("", "/cameras/{name}"):
        app.router.add_get(prefix + "/mjpeg", mjpeg)
        app.router.add_get(prefix + "/snapshot.jpg", snapshot)
