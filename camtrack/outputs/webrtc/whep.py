"""WHEP (WebRTC-HTTP Egress Protocol): a viewer's peer made from one HTTP POST, ended by DELETE.

POST an SDP offer (`Content-Type: application/sdp`) to `/whep` or `/cameras/NAME/whep`:
201 Created with the answer and a `Location` naming the session; DELETE that location to hang up.
`?tier=auto|main|low` (or `?quality=`) asks for a quality tier (docs/quality.md; default auto).

The offer's body has a size bound and a deadline. A session is pending (camtrack.cameras) until its
peer connects, then a viewer; if the viewers filled the server meanwhile, its peer is closed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from urllib.parse import quote

from aiohttp import web

from ...access import cors_headers, find_camera
from ...config import Config
from ...connections import read_body
from ...logs import ClientLog, clip
from ...media.admission import CLIENT_TEXT
from ...media.feeds import Transport
from ...media.quality import CHOICES
from ..directory import Camera, Cameras
from .contract import PeerFactory
from .ice import IceContext
from .peer import LocalPeers, OfferError, ServerFull, screen_offer

logger = logging.getLogger(__name__)
log = ClientLog(logger)

MAX_OFFER_SIZE = 64 * 1024
#: what a page of an allowed origin may read of a WHEP answer
EXPOSE = {"Access-Control-Expose-Headers": "Location, Link, Accept-Post"}


class WhepSession:
    """One WHEP viewer and the resource URL that ends it."""

    transport = Transport.WHEP

    def __init__(self, camera: Camera, cameras: Cameras, config: Config, remote: str,
                 sessions: dict[str, WhepSession], ice: IceContext | None = None) -> None:
        self.id = secrets.token_urlsafe(16)
        self.camera = camera
        self.cameras = cameras
        self.remote = remote
        self.sessions = sessions
        self.location = f"{config.base_path}cameras/{quote(camera.name)}/whep/{self.id}"  # (base_path ends in /)
        ice = ice or IceContext(config.ice_servers, config.turn_secret)
        make_peer: PeerFactory = ice.peers or LocalPeers(config, ice)  # (camtrack.app's choice)
        self.peer = make_peer(camera, Transport.WHEP, remote, self.end)
        self.peer.on_state(self._peer_state)
        self.reason: str | None = None
        self._teardown: asyncio.Task[None] | None = None
        sessions[self.id] = self
        cameras.hold(camera, self)

    def _peer_state(self) -> None:
        """The peer connected: the session becomes a viewer, if there is room for one more."""
        if self.reason is None and self.peer.state == "connected" \
                and self not in self.camera.viewers[Transport.WHEP] \
                and (refused := self.cameras.admit(self.camera, self)) is not None:
            log.warning(self.remote, "refused whep viewer %s of %s: %s", self.remote, self.camera.name, refused.text)
            self.end(refused.text)

    def end(self, reason: str) -> None:
        """Hang up (once; safe from any callback)."""
        if self.reason is not None:
            return
        self.reason = reason
        self.sessions.pop(self.id, None)
        self.cameras.leave(self.camera, self)
        log.info(self.remote, "whep viewer %s of %s left: %s", self.remote, self.camera.name, reason)
        self._teardown = asyncio.ensure_future(self.peer.close())

    async def closed(self) -> None:
        if self._teardown is not None:
            await asyncio.shield(self._teardown)


def link_headers(ice: IceContext) -> list[str]:
    """The ICE servers as `Link: <url>; rel="ice-server"` values (TURN credentials made for this
    viewer when there is a --turn-secret)."""
    links = []
    for server in ice.browser_servers():
        link = f'<{server["urls"]}>; rel="ice-server"'
        if "username" in server:
            link += f'; username="{server["username"]}"; credential="{server["credential"]}"; credential-type="password"'
        links.append(link)
    return links


def add_routes(app: web.Application, config: Config, cameras: Cameras, ice: IceContext | None = None) -> None:
    """`/whep` (the first camera) and `/cameras/{name}/whep`, with their session resources."""
    sessions: dict[str, WhepSession] = {}
    ice = ice or IceContext(config.ice_servers, config.turn_secret)

    def cors(request: web.Request) -> dict[str, str]:
        """Same-origin, --allow-origin, or no Origin (not a browser); 403 for any other page."""
        return cors_headers(request, config.allow_origins, **EXPOSE)

    def camera_of(request: web.Request, CORS: dict[str, str]) -> Camera:
        return find_camera(request, cameras, config.token, request.match_info.get("name"), headers=CORS)

    async def options(request: web.Request) -> web.Response:
        CORS = cors(request)
        # a preflight carries no credentials (browsers never send them with one): only the camera
        if cameras.get(request.match_info.get("name")) is None:
            raise web.HTTPNotFound(text="no such camera\n", headers=CORS)
        return web.Response(status=204, headers={
            **CORS,
            "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type, Authorization",
            "Access-Control-Max-Age": "86400",
            "Accept-Post": "application/sdp",
            "Allow": "POST, OPTIONS",
        })

    async def post(request: web.Request) -> web.Response:
        CORS = cors(request)
        camera = camera_of(request, CORS)
        if request.content_type != "application/sdp":
            raise web.HTTPUnsupportedMediaType(text="an offer must be Content-Type: application/sdp\n", headers=CORS)
        # the whole body, however many TCP segments it came in, within a size and a time
        body = await read_body(request, MAX_OFFER_SIZE, config.header_timeout, headers=CORS)
        try:
            sdp = body.decode()
        except UnicodeDecodeError:
            raise web.HTTPBadRequest(text="the offer is not UTF-8 text\n", headers=CORS) from None
        remote = request.remote or "?"
        choice = request.query.get("tier", request.query.get("quality", "auto"))
        if choice not in CHOICES or (choice != "auto" and choice not in camera.qualities()):
            raise web.HTTPBadRequest(text=f"tier must be auto or one of {', '.join(camera.qualities())}\n",
                                     headers=CORS)
        try:
            screen_offer(sdp)  # counted, not parsed: before any parsing, peer or camera
        except OfferError as exc:
            camera.meters[Transport.WHEP].negotiation_failures += 1
            log.warning(remote, "refused whep offer from %s for %s: %s", remote, camera.name, exc)
            raise web.HTTPBadRequest(text=f"{exc}\n", headers=CORS) from None
        if (refused := cameras.admission(camera)) is not None:  # checked before a peer (and the camera) is started
            log.warning(remote, "refused whep viewer %s of %s: %s", remote, camera.name, refused.text)
            raise web.HTTPServiceUnavailable(text=f"{refused.text}\n", headers={**CORS, "Retry-After": "10"})
        session = WhepSession(camera, cameras, config, remote, sessions, ice)  # pending until it connects
        try:
            session.peer.choose_quality(choice)
        except ValueError as exc:  # (a quality the camera lacks)
            session.end(f"refused quality: {clip(exc)}")
            await session.closed()
            raise web.HTTPBadRequest(text=f"{clip(exc, 300)}\n", headers=CORS) from None
        try:
            answer = await session.peer.answer(sdp)
        except ServerFull:  # (decided and counted where the handshake turn was waited for)
            log.warning(remote, "refused whep viewer %s of %s: %s", remote, camera.name, CLIENT_TEXT)
            session.end(CLIENT_TEXT)
            await session.closed()
            raise web.HTTPServiceUnavailable(text=f"{CLIENT_TEXT}\n", headers={**CORS, "Retry-After": "10"}) from None
        except OfferError as exc:
            session.end(f"bad offer: {clip(exc)}")
            await session.closed()
            raise web.HTTPBadRequest(text=f"{clip(exc, 300)}\n", headers=CORS) from None
        except BaseException as exc:
            if session.reason is None or not isinstance(exc, Exception):
                session.end(f"failed to answer: {type(exc).__name__}")
                await session.closed()
                raise
            answer = ""  # ended while answering (evicted, shut down): its peer is gone, see below
        if session.reason is not None:  # ended while answering (evicted, shut down)
            await session.closed()
            raise web.HTTPServiceUnavailable(text=f"{session.reason}\n", headers={**CORS, "Retry-After": "10"})
        headers = {**CORS, "Location": session.location, "Content-Type": "application/sdp"}
        response = web.Response(status=201, text=answer, headers=headers)
        for link in link_headers(ice):
            response.headers.add("Link", link)
        log.info(remote, "whep viewer %s answered for %s", remote, camera.name)
        return response

    async def delete(request: web.Request) -> web.Response:
        CORS = cors(request)
        camera = camera_of(request, CORS)
        session = sessions.get(request.match_info["id"])
        if session is None or session.camera is not camera:
            raise web.HTTPNotFound(text="no such WHEP session\n", headers=CORS)
        session.end("DELETE")
        await session.closed()
        return web.Response(status=200, headers=CORS)

    async def patch(request: web.Request) -> web.Response:
        # trickle ICE is not supported: the answer carries every candidate of the server
        raise web.HTTPMethodNotAllowed("PATCH", ["DELETE", "OPTIONS"], headers=cors(request))

    async def resource_options(request: web.Request) -> web.Response:
        return web.Response(status=204, headers={
            **cors(request), "Access-Control-Allow-Methods": "DELETE, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization", "Allow": "DELETE, OPTIONS"})

    for base in ("/whep", "/cameras/{name}/whep"):
        app.router.add_post(base, post)
        app.router.add_route("OPTIONS", base, options)
    app.router.add_delete("/cameras/{name}/whep/{id}", delete)
    app.router.add_patch("/cameras/{name}/whep/{id}", patch)
    app.router.add_route("OPTIONS", "/cameras/{name}/whep/{id}", resource_options)
