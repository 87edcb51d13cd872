"""Publishing a camera to a Janus VideoRoom (an SFU) over the Janus HTTP API.

The publisher sends the camera's already-encoded packets from the shared encoder: one upstream
stream, however many viewers Janus then serves. It keeps publishing through faults: whatever goes
wrong (Janus down, restarted, an error reply, a time-out), it logs why, waits (back-off) and
publishes again; the local viewers never notice.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from ..media.feeds import Transport
from ..redaction import scrub, with_decoded
from ..sources import redact, url_secrets
from .webrtc.contract import CameraView
from .webrtc.ice import IceContext
from .webrtc.icegate import guard_ice
from .webrtc.peer import CLOSE_TIMEOUT, codec_preferences
from .webrtc.rtcp import forward_keyframe_requests
from .webrtc.tracks import make_track

logger = logging.getLogger(__name__)

#: seconds between keepalives (Janus drops a session after 60 s of silence)
KEEPALIVE = 25.0
#: seconds one API request, and the whole publish handshake, may take
REQUEST_TIMEOUT = 10.0
CONNECT_TIMEOUT = 20.0


class JanusError(Exception):
    """Janus said no, or did not answer as the API says it should."""


class JanusPublisher:
    """Keeps one camera published as a feed of a Janus VideoRoom."""

    def __init__(self, camera: CameraView, url: str, room: int, pin: str | None = None,
                 display: str | None = None, ice_servers: list[str] | None = None,
                 retry_min: float = 1.0, retry_max: float = 30.0, request_timeout: float = REQUEST_TIMEOUT,
                 ice: IceContext | None = None) -> None:
        if camera.packets() is None:
            raise ValueError("publishing to Janus needs the shared encoder or passthrough (--encoder shared)")
        self.camera = camera
        self.url = url.rstrip("/")
        #: the URL as shown (API, logs, errors): without its user-info or secret query values
        self.shown_url = redact(self.url)
        self._secrets = with_decoded([*url_secrets(self.url), pin])
        self.room = room
        self.pin = pin
        self.display = display or camera.name
        #: the server's ICE side (its mux, TURN credentials); else a socket per peer and these servers
        self.ice = ice or IceContext(ice_servers or [])
        self.retry_min, self.retry_max = retry_min, retry_max
        self.request_timeout = request_timeout
        #: idle, connecting, publishing or retrying
        self.state = "idle"
        self.publishes = 0
        self.failures = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._transactions = (f"{secrets.token_hex(4)}-{n}" for n in itertools.count())

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.state = "idle"

    def describe(self) -> dict[str, Any]:
        return {"url": self.shown_url, "room": self.room, "display": self.display, "state": self.state,
                "publishes": self.publishes, "failures": self.failures, "last_error": self.last_error}

    async def _run(self) -> None:
        delay = self.retry_min
        while True:
            self.state = "connecting"
            started = time.monotonic()
            try:
                await self._publish_once()
                reason = "the publication ended"
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                reason = f"Janus did not answer within {self.request_timeout:g} s"
            except Exception as exc:  # noqa: BLE001 - whatever it was, log it and publish again
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                reason = scrub(reason, self._secrets)  # a library's error may print the URL
            self.failures += 1
            if time.monotonic() - started > 60:
                delay = self.retry_min  # it had been up a while: start the back-off again
            if reason != self.last_error:
                logger.warning("janus %s room %s (%s): %s; retrying", self.shown_url, self.room, self.display, reason)
            self.last_error = reason
            self.state = "retrying"
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max)

    async def _publish_once(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.request_timeout + 35)  # long polls wait up to 30 s
        async with aiohttp.ClientSession(timeout=timeout) as http:
            session = (await self._call(http, self.url, {"janus": "create"}))["data"]["id"]
            events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            poller = asyncio.ensure_future(self._poll(http, session, events))
            keepalive = asyncio.ensure_future(self._keepalive(http, session))
            pc: RTCPeerConnection | None = None
            track = None
            ended: asyncio.Future[None] | None = None
            try:
                base = f"{self.url}/{session}"
                handle = (await self._call(http, base, {"janus": "attach", "plugin": "janus.plugin.videoroom"}))["data"]["id"]
                endpoint = f"{base}/{handle}"
                join = {"request": "join", "ptype": "publisher", "room": self.room, "display": self.display}
                if self.pin:
                    join["pin"] = self.pin
                await self._message(http, endpoint, join, events, "joined")

                pc = RTCPeerConnection(self.ice.rtc_configuration())
                track = make_track(self.camera, Transport.JANUS)
                transceiver = pc.addTransceiver(track, direction="sendonly")
                transceiver.setCodecPreferences(codec_preferences(self.camera.settings.codec))
                self.ice.prepare(pc)  # on the shared UDP port, if there is one
                forward_keyframe_requests(pc, track)
                await pc.setLocalDescription(await pc.createOffer())
                guard_ice(pc)  # only Janus's validated path reaches this peer's DTLS and SRTP
                offer = {"type": "offer", "sdp": pc.localDescription.sdp}
                reply = await self._message(http, endpoint, {"request": "configure", "audio": False, "video": True},
                                            events, "event", jsep=offer)
                jsep = reply.get("jsep")
                if not jsep or jsep.get("type") != "answer":
                    raise JanusError(f"no SDP answer to the publish offer: {reply.get('plugindata')}")
                await pc.setRemoteDescription(RTCSessionDescription(jsep["sdp"], "answer"))
                await self._call(http, endpoint, {"janus": "trickle", "candidate": {"completed": True}})

                ended = asyncio.get_running_loop().create_future()

                @pc.on("connectionstatechange")
                def on_state() -> None:
                    if pc.connectionState in ("failed", "closed") and not ended.done():
                        ended.set_exception(JanusError(f"the connection to Janus {pc.connectionState}"))

                try:
                    async with asyncio.timeout(CONNECT_TIMEOUT):
                        while pc.connectionState != "connected":
                            if ended.done():
                                ended.result()
                            await asyncio.sleep(0.05)
                except TimeoutError:
                    raise JanusError(f"the connection to Janus was not established within {CONNECT_TIMEOUT:g} s") from None
                self.state = "publishing"
                self.publishes += 1
                logger.info("janus %s room %s: publishing %s as %r", self.shown_url, self.room, self.camera.name,
                            self.display)
                # until the connection fails or the poller sees the session die
                done, _ = await asyncio.wait([ended, poller, keepalive], return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            finally:
                for task in (poller, keepalive):
                    task.cancel()
                    if task.done() and not task.cancelled():
                        task.exception()  # retrieved: it is why we are here, or moot
                if track is not None:
                    track.stop()
                if pc is not None:
                    try:
                        await asyncio.wait_for(asyncio.shield(pc.close()), CLOSE_TIMEOUT)
                    except TimeoutError:
                        pass
                if ended is not None and ended.done() and not ended.cancelled():
                    ended.exception()  # closing the peer ends it too: retrieved, not raised
                try:  # best effort: Janus may be gone
                    await asyncio.wait_for(self._call(http, f"{self.url}/{session}", {"janus": "destroy"}), 2)
                except (TimeoutError, JanusError, aiohttp.ClientError, OSError):
                    pass

    async def _call(self, http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """One request; the reply, or JanusError for an error reply."""
        transaction = next(self._transactions)
        async with http.post(url, json={**body, "transaction": transaction},
                             timeout=aiohttp.ClientTimeout(total=self.request_timeout)) as response:
            if response.status != 200:
                raise JanusError(f"HTTP {response.status} from {redact(url)}")
            reply: dict[str, Any] = await response.json(content_type=None)
        if reply.get("janus") == "error":
            error = reply.get("error", {})
            raise JanusError(f"error {error.get('code')}: {error.get('reason')}")
        return reply

    async def _message(self, http: aiohttp.ClientSession, endpoint: str, body: dict[str, Any],
                       events: asyncio.Queue[dict[str, Any]], expect: str,
                       jsep: dict[str, str] | None = None) -> dict[str, Any]:
        """Send a plugin request and wait for its event (the plugin answers asynchronously)."""
        message: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            message["jsep"] = jsep
        await self._call(http, endpoint, message)
        async with asyncio.timeout(self.request_timeout):
            while True:
                event = await events.get()
                data = event.get("plugindata", {}).get("data", {})
                if "error" in data or "error_code" in data:
                    raise JanusError(f"videoroom error {data.get('error_code')}: {data.get('error')}")
                if data.get("videoroom") == expect or (expect == "event" and event.get("jsep")):
                    return event

    async def _poll(self, http: aiohttp.ClientSession, session: int, events: asyncio.Queue[dict[str, Any]]) -> None:
        """Long-poll the session's events until it fails (the error ends the publication)."""
        url = f"{self.url}/{session}"
        while True:
            async with http.get(url, params={"maxev": "10", "rid": str(int(time.time() * 1000))},
                                timeout=aiohttp.ClientTimeout(total=self.request_timeout + 35)) as response:
                if response.status != 200:
                    raise JanusError(f"HTTP {response.status} polling {redact(url)}")
                reply = await response.json(content_type=None)
            for event in reply if isinstance(reply, list) else [reply]:
                kind = event.get("janus")
                if kind == "error":
                    error = event.get("error", {})
                    raise JanusError(f"session lost: error {error.get('code')}: {error.get('reason')}")
                if kind in ("hangup", "detached"):
                    raise JanusError(f"Janus sent {kind}: {event.get('reason', '')}".strip())
                if kind == "event":
                    await events.put(event)

    async def _keepalive(self, http: aiohttp.ClientSession, session: int) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE)
            await self._call(http, f"{self.url}/{session}", {"janus": "keepalive"})
