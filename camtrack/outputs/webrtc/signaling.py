"""The signaling protocol on `GET /ws`: one websocket, one peer connection.

Every message is a JSON text frame, an object with a "type":

- server → client on open: {"type": "hello", "codecs": [...], "iceServers": [...]}
- client → server: {"type": "offer", "sdp": "..."}  (recvonly video)
- server → client: {"type": "answer", "sdp": "...", "quality": {...}} (candidates included; the
  quality as in the "quality" message below, when the viewer has tiers)
- client → server, optional trickle: {"type": "candidate", "candidate": "candidate:...",
  "sdpMid": "0", "sdpMLineIndex": 0}; {"type": "candidate", "candidate": null} ends them
- either side: {"type": "bye"}
- client → server: {"type": "stream"}: no WebRTC; the camera's packets come as binary messages on
  this socket (camtrack.outputs.wsvideo), the fallback when WebRTC cannot connect. An offer
  afterwards goes back to WebRTC.
- client → server: {"type": "quality", "quality": "auto" | "main" | "low"}: the tier it wants
  (docs/quality.md), before or after its offer, WebRTC or streaming; server → client:
  {"type": "quality", "choice", "tier", "reason", "moving_to", "qualities"} whenever its tier or choice
  changes
- server → client: {"type": "error", "message": "..."} for anything it cannot use

With a token configured, a client that did not put `?token=` in the URL sends
{"type": "auth", "token": "..."} first, and the hello follows.
Closing the socket closes the peer and the other way round; a new offer replaces the peer.

The session is *pending* (camtrack.cameras) until its peer connects, then a viewer: "server full"
comes when the socket opens if the viewers already fill the server, else when the peer connects
if they filled it meanwhile; a streaming session is a viewer as soon as it asks. A client that
does not read its socket is closed after SEND_TIMEOUT with at most a small send buffer held for it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from aiortc import RTCIceCandidate
from aiortc.sdp import candidate_from_sdp

from ...access import REFUSAL, bearer_token, find_camera, origin_refusal, token_matches
from ...config import Config
from ...logs import ClientLog, clip, clip_repr
from ...media.admission import CLIENT_TEXT, Refused
from ...media.feeds import FeedClosed, Transport
from ...media.packet import MediaKind
from ...media.quality import CHOICES
from ...media.ratelimit import TokenBucket
from ...media.reader import PacketReader
from ..directory import Camera, Cameras
from ..results import ResultSender
from ..wsvideo import PacketStream
from .contract import PeerFactory, PeerSession
from .ice import IceContext
from .peer import LocalPeers, OfferError, ServerFull, screen_offer
from .talk import Hearing, Talk, TalkRefused, talk_url
from .tracks import camera_codecs, tier_reader

logger = logging.getLogger(__name__)
log = ClientLog(logger)

#: the largest message a client may send (SDP offers are a few KiB)
MAX_MESSAGE_SIZE = 64 * 1024
#: a client may send this many messages at once, refilled at MESSAGE_RATE a second
MESSAGE_BURST = 60
MESSAGE_RATE = 20.0
#: close code for "unauthorized" (the 4000–4999 range is the application's)
CLOSE_UNAUTHORIZED = 4401
#: a client that has not taken a message (or the close) within this many seconds is dropped
SEND_TIMEOUT = 5.0
#: the kernel's send buffer for a websocket (it doubles it): messages are a few KiB, so this
#: bounds what a client that does not read costs without slowing one that does
SEND_BUFFER = 16 * 1024
#: ... and for one that streams video over it: a keyframe or two (about 0.5 s at 1 Mbit/s), so a
#: slow reader's backlog stays short and it skips to the next keyframe instead
STREAM_SEND_BUFFER = 32 * 1024
#: bytes aiohttp's transport buffers above the kernel's before a send waits
WRITE_BUFFER = 16 * 1024
#: the longest error message sent back (client data in it is clipped shorter, see camtrack.logs)
MAX_ERROR = 300


class ProtocolError(ValueError):
    """A message the server cannot use; sent back as an error message."""


class Session:
    """One viewer's websocket and the peer connection negotiated over it."""

    def __init__(self, ws: web.WebSocketResponse, remote: str, config: Config, camera: Camera,
                 cameras: Cameras, transport: asyncio.Transport | None = None, ice: IceContext | None = None) -> None:
        self.ws = ws
        self.connection = transport
        self.remote = remote
        self.config = config
        self.camera = camera
        self.cameras = cameras
        self.ice = ice or IceContext(config.ice_servers, config.turn_secret)
        self.peer: PeerSession | None = None
        #: this viewer talking to its camera (talk.py), while it does
        self.talk: Talk | None = None
        #: WEBSOCKET while it negotiates WebRTC, WS_VIDEO while it streams over the socket
        self.transport = Transport.WEBSOCKET
        self.stream: PacketStream | None = None
        self._streaming: asyncio.Task[None] | None = None
        #: the processing results sent beside the streamed packets, and the text send in flight
        self._results: asyncio.Task[None] | None = None
        self._text: asyncio.Task[None] | None = None
        self.reason: str | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._teardown: asyncio.Task[None] | None = None
        self._bucket = TokenBucket(MESSAGE_BURST, MESSAGE_RATE)
        #: what the session's end sends: an error message first (if any), the close code
        self._error: str | None = None
        self._close_code: int = WSCloseCode.OK
        self._close_message: bytes = b""
        #: the quality the viewer asked for (docs/quality.md): its peer's or stream's, and the next one's
        self.quality_choice = "auto"

    @property
    def is_viewer(self) -> bool:
        return self in self.camera.viewers[self.transport]

    async def run(self, authorized: bool) -> None:
        """Greet the client (after its auth message if needed), then handle its messages."""
        self._idle = asyncio.get_running_loop().call_later(self.config.idle_timeout, self._idle_expired)
        if authorized and not await self.welcome():
            return
        while self.reason is None:
            message = await self.ws.receive()
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            if message.type == WSMsgType.ERROR:
                self.end(f"websocket error: {clip(self.ws.exception())}")
                return
            if not self._bucket.take():
                self.end("flooded the socket", error="too many messages; closing",
                         code=WSCloseCode.POLICY_VIOLATION, message=b"too many messages")
                return
            if message.type == WSMsgType.BINARY:
                await self.send_error("binary frames are not part of the protocol; send JSON text")
                continue
            if message.type != WSMsgType.TEXT:
                continue
            try:
                parsed = parse_message(message.data)
                if not authorized:
                    authorized = await self.on_auth(parsed)
                    if not authorized:
                        return
                    continue
                await self.handle(parsed)
            except ProtocolError as exc:
                log.info(self.remote, "viewer %s: %s", self.remote, exc)
                await self.send_error(str(exc))

    async def welcome(self) -> bool:
        """Say hello (after authentication), or that the viewers already fill the server."""
        if (refused := self.cameras.admission(self.camera)) is not None:
            self.refuse_full(refused)
            return False
        await self.send_hello()
        return True

    def refuse_full(self, refused: Refused | None = None) -> None:
        """Tell the client it is refused and close: `refused` is camtrack.media.admission's decision
        (None: decided and counted where the handshake turn was waited for, ServerFull)."""
        text = CLIENT_TEXT if refused is None else refused.text
        log.warning(self.remote, "refused viewer %s of %s: %s", self.remote, self.camera.name, text)
        self.end(text, error=text, code=WSCloseCode.TRY_AGAIN_LATER, message=text.encode())

    async def send_hello(self) -> None:
        settings = self.camera.settings
        await self.send({
            "type": "hello",
            # what a WebRTC viewer may get, the camera's own first: the first its offer has
            "codecs": list(camera_codecs(self.camera)),
            # TURN credentials made for this viewer (that expire) when there is a --turn-secret
            "iceServers": self.ice.browser_servers(),
            "camera": self.camera.name,
            "width": settings.width,
            "height": settings.height,
            "fps": settings.fps,
            # whether {"type": "stream"} can work: the camera has one packet feed for everyone
            "stream": self.camera.packets() is not None,
            # the qualities a viewer may ask for with {"type": "quality"} (besides "auto")
            "qualities": list(self.camera.qualities()) if self.camera.packets() is not None else ["main"],
            # whether the camera has sound: an audio m-line, or "audio": true with "stream", gets it
            "audio": self.camera.packets(MediaKind.AUDIO) is not None,
            # whether a viewer may talk to the camera (with the talk token): its offer then sends audio
            "talk": bool(self.config.talk_token)
            and talk_url(self.camera.settings.talk, self.camera.settings.source) is not None,
        })

    async def on_auth(self, message: dict[str, Any]) -> bool:
        """The first message when a token is needed and the URL had none."""
        if message["type"] == "auth" and token_matches(self.config.token, message.get("token")):
            return await self.welcome()
        self.end("unauthorized", error="unauthorized: send {\"type\": \"auth\", \"token\": \"...\"} first",
                 code=CLOSE_UNAUTHORIZED, message=b"unauthorized")
        return False

    async def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "offer":
            await self.on_offer(message)
        elif kind == "candidate":
            await self.on_candidate(message)
        elif kind == "stream":
            await self.on_stream(message.get("audio") is True)
        elif kind == "quality":
            await self.on_quality(message)
        elif kind == "talk":
            await self.on_talk(message)
        elif kind == "bye":
            self.end("said bye")
        elif kind == "auth":
            pass  # already authorized: harmless
        else:
            raise ProtocolError(f"unknown message type {clip_repr(kind)}; expected offer, candidate, stream, quality, "
                                f"talk or bye")

    async def on_offer(self, message: dict[str, Any]) -> None:
        sdp = message.get("sdp")
        if not isinstance(sdp, str) or not sdp.strip():
            raise ProtocolError("an offer needs an 'sdp' string")
        try:
            screen_offer(sdp)  # counted, not parsed: before any parsing or peer (the current one stays)
        except OfferError as exc:
            self.camera.meters[Transport.WEBSOCKET].negotiation_failures += 1
            raise ProtocolError(str(exc)) from None
        if self.peer is not None:
            if self.peer.negotiating:
                raise ProtocolError("an offer is still being negotiated; wait for it to connect or fail")
            log.info(self.remote, "viewer %s: new offer replaces the peer", self.remote)
            # a viewer no more until the new peer connects (it may not)
            self.cameras.leave(self.camera, self)
            self.cameras.hold(self.camera, self)
            await self._close_peer()
        if self._streaming is not None:
            log.info(self.remote, "viewer %s: an offer ends its websocket stream", self.remote)
            self.cameras.leave(self.camera, self)
            await self._stop_stream()
            self.transport = Transport.WEBSOCKET
            self.cameras.hold(self.camera, self)
        if self.reason is not None:
            return  # the session ended meanwhile
        if (refused := self.cameras.admission(self.camera)) is not None:  # before the peer (and maybe the camera) starts
            self.refuse_full(refused)
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        make_peer: PeerFactory = self.ice.peers or LocalPeers(self.config, self.ice)  # (camtrack.app's choice)
        peer = make_peer(self.camera, Transport.WEBSOCKET, self.remote, lambda reason: self._peer_ended(peer, reason))
        peer.on_state(lambda: self._peer_state(peer))
        peer.on_quality(lambda: self._tell_quality(peer))
        self.peer = peer
        if self.quality_choice != "auto":
            try:
                peer.choose_quality(self.quality_choice)
            except ValueError as exc:
                log.info(self.remote, "viewer %s: %s", self.remote, exc)
        try:
            answer = await peer.answer(sdp)
        except OfferError as exc:
            await self._close_peer()
            raise ProtocolError(clip(exc, MAX_ERROR)) from None
        except ServerFull:
            if self.peer is peer:
                self.refuse_full()
            await peer.close()
            return
        if self.peer is not peer or self.reason is not None:
            await peer.close()  # replaced or ended while negotiating
            return
        quality = peer.quality()
        # (its quality rides along: a "quality" message comes only when it changes)
        await self.send({"type": "answer", "sdp": answer, **({"quality": quality} if quality is not None else {})})

    async def on_quality(self, message: dict[str, Any]) -> None:
        """The viewer asks for a quality: its peer's or stream's now, and the next one's."""
        choice = message.get("quality")
        if not isinstance(choice, str) or choice not in CHOICES:
            raise ProtocolError(f"'quality' must be one of {', '.join(CHOICES)}")
        try:
            if self.peer is not None:
                self.peer.choose_quality(choice)
            elif self.stream is not None:
                self.stream.choose(choice)
            elif choice != "auto" and choice not in self.camera.qualities():
                raise ValueError(f"this camera has no {choice} tier")
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        self.quality_choice = choice
        if self.stream is not None:
            self._tell_stream_quality()

    def _tell_quality(self, peer: PeerSession) -> None:
        """Tell the client its peer's quality (its tier changed, or it was answered)."""
        quality = peer.quality()
        if quality is not None and self.peer is peer and self.reason is None:
            asyncio.ensure_future(self.send({"type": "quality", **quality}))

    def _tell_stream_quality(self) -> None:
        quality = self.stream.quality() if self.stream is not None else None
        if quality is not None and self.reason is None:
            asyncio.ensure_future(self.send({"type": "quality", **quality}))

    async def on_talk(self, message: dict[str, Any]) -> None:
        """Start or stop talking to the camera (talk.py): with --talk-token's token, a camera with
        --talk, and a WebRTC peer whose offer sends audio; one talker per camera."""
        if message.get("on") is not True:
            await self._stop_talk()
            await self.send({"type": "talk", "state": "off"})
            return
        if not self.config.talk_token:
            raise ProtocolError("nobody may talk: the server has no --talk-token")
        if not token_matches(self.config.talk_token, message.get("token")):
            raise ProtocolError("not allowed to talk: a talk token is needed (a permission apart from watching)")
        url = talk_url(self.camera.settings.talk, self.camera.settings.source)
        if url is None:
            raise ProtocolError(f"camera {self.camera.name} has no back-channel to talk to (--talk)")
        peer = self.peer
        if not isinstance(peer, Hearing) or not peer.hears:
            raise ProtocolError("talking needs a WebRTC peer whose offer sends audio (a sendrecv audio m-line)")
        if self.talk is not None:
            await self.send({"type": "talk", "state": "on"})
            return
        talk = Talk(self.camera.name, url, peer, self._talk_ended)
        try:
            await talk.start()
        except TalkRefused as exc:
            raise ProtocolError(str(exc)) from None
        if self.reason is not None or self.peer is not peer:
            await talk.stop()
            return
        self.talk = talk
        log.info(self.remote, "viewer %s talks to %s", self.remote, self.camera.name)
        await self.send({"type": "talk", "state": "on"})

    def _talk_ended(self, reason: str) -> None:
        self.talk = None
        if self.reason is None:
            asyncio.ensure_future(self.send({"type": "talk", "state": "off", "reason": reason}))

    async def _stop_talk(self) -> None:
        talk, self.talk = self.talk, None
        if talk is not None:
            await talk.stop()

    async def on_stream(self, audio: bool = False) -> None:
        """Stop any WebRTC peer and send the camera's packets over this socket instead (and its sound
        beside them when `audio` is asked for and the camera has some: camtrack.outputs.wsvideo)."""
        feed = self.camera.packets()
        if feed is None:
            raise ProtocolError("this camera has no shared packet feed to stream (--encoder per-viewer): "
                                "use WebRTC or /mjpeg")
        if self._streaming is not None:
            raise ProtocolError("already streaming")
        self.cameras.leave(self.camera, self)  # a connected peer's viewer no more
        sound = self.camera.packets(MediaKind.AUDIO) if audio else None
        # (before: no idle clock)
        self.stream = PacketStream(functools.partial(tier_reader, self.camera, Transport.WS_VIDEO, None,
                                                     self.quality_choice), on_move=self._tell_stream_quality,
                                   audio=None if sound is None else functools.partial(PacketReader, sound))
        await self._close_peer()
        if self.reason is not None:
            return
        self.transport = Transport.WS_VIDEO
        if (refused := self.cameras.admit(self.camera, self)) is not None:
            self.refuse_full(refused)
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self.connection is not None:
            sock = self.connection.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SEND_BUFFER)
        log.info(self.remote, "viewer %s of %s streams over the websocket (%s)", self.remote, self.camera.name,
                 feed.codec.codec)
        self._streaming = asyncio.ensure_future(self._stream(self.stream))
        processing = self.camera.processing
        if processing is not None:
            # its results beside the packets, each naming its picture's presentation time
            sender = ResultSender(processing, self._send_text, self._text_busy, self.stream.pictures, "pts")
            self._results = asyncio.ensure_future(sender.run())

    async def _stream(self, stream: PacketStream) -> None:
        try:
            await stream.run(self.send_bytes)
        except FeedClosed:
            pass  # the feed stopped (the server shuts down): the session ends with it
        if self.reason is None and self.stream is stream:
            self.end("stream ended")

    async def _stop_stream(self) -> None:
        task, self._streaming, self.stream = self._streaming, None, None
        results, self._results = self._results, None
        for running in (task, results, self._text):
            if running is not None:
                running.cancel()
        await asyncio.gather(*(t for t in (task, results) if t is not None), return_exceptions=True)

    def _text_busy(self) -> bool:
        """Whether a text message now would wait: one is still being sent, or the socket's buffer
        holds more than a little (a result is then skipped: newest wins)."""
        if self._text is not None and not self._text.done():
            return True
        return self.connection is not None and self.connection.get_write_buffer_size() > WRITE_BUFFER // 2

    def _send_text(self, text: str) -> None:
        """One text message beside the streamed packets, not waited for (see _text_busy)."""
        if self.ws.closed or self.reason is not None:
            raise ConnectionError("the socket is closed")
        self._text = asyncio.ensure_future(self._write_text(text))

    async def _write_text(self, text: str) -> None:
        try:
            await asyncio.wait_for(self.ws.send_str(text), SEND_TIMEOUT)
        except (TimeoutError, ConnectionError, RuntimeError):
            pass  # the video's own send notices a client that does not read

    async def send_bytes(self, data: bytes) -> bool:
        """One binary message; False when the socket is gone or did not take it in time."""
        if self.ws.closed or self.reason is not None:
            return False
        try:
            # like send(): a client that does not read for that long is dropped, not queued for
            await asyncio.wait_for(self.ws.send_bytes(data), SEND_TIMEOUT)
        except TimeoutError:
            self.abort(f"did not read its video for {SEND_TIMEOUT:g} s")
            return False
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def on_candidate(self, message: dict[str, Any]) -> None:
        if self.peer is None:
            raise ProtocolError("a candidate came before any offer")
        peer = self.peer
        text = message.get("candidate")
        if text is None or text == "":
            await peer.add_candidate(None)
            return
        if not isinstance(text, str):
            raise ProtocolError("'candidate' must be a string or null")
        mid, index = message.get("sdpMid"), message.get("sdpMLineIndex")
        if mid is not None and not isinstance(mid, str):
            raise ProtocolError("'sdpMid' must be a string")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
            raise ProtocolError("'sdpMLineIndex' must be an integer")
        if mid is None and index is None:
            raise ProtocolError("a candidate needs 'sdpMid' or 'sdpMLineIndex'")
        try:
            candidate: RTCIceCandidate = candidate_from_sdp(text.removeprefix("candidate:"))
        except Exception:  # noqa: BLE001 - the parser raises IndexError, ValueError, ...
            raise ProtocolError(f"malformed candidate: {clip_repr(text)}") from None
        candidate.sdpMid, candidate.sdpMLineIndex = mid, index
        try:
            await peer.add_candidate(candidate)
        except Exception as exc:  # noqa: BLE001
            raise ProtocolError(f"candidate refused: {clip(exc)}") from None

    async def send(self, message: dict[str, Any]) -> None:
        if not self.ws.closed:
            try:
                # a send waits while the buffers are full: a client that does not read is dropped
                await asyncio.wait_for(self.ws.send_json(message), SEND_TIMEOUT)
            except TimeoutError:
                self.abort(f"did not read its socket for {SEND_TIMEOUT:g} s")
            except (ConnectionError, RuntimeError):
                pass  # the socket went away; run() sees it close

    async def send_error(self, text: str) -> None:
        await self.send({"type": "error", "message": clip(text, MAX_ERROR)})

    def end(self, reason: str, error: str | None = None, code: int = WSCloseCode.OK, message: bytes = b"") -> None:
        """Hang up: close the peer and the socket (once; safe from any callback), sending `error`
        first if given, and closing with `code`."""
        if self.reason is not None:
            return
        self.reason = reason
        self._error, self._close_code, self._close_message = error, code, message
        self.cameras.leave(self.camera, self)
        log.info(self.remote, "viewer %s of %s left: %s", self.remote, self.camera.name, reason)
        self._teardown = asyncio.ensure_future(self._close_all())

    def abort(self, reason: str) -> None:
        """Drop the connection at once, unsent data and all (a client that does not read)."""
        if self.connection is not None:
            self.connection.abort()
        self.end(reason)

    async def closed(self) -> None:
        """Wait until `end()` has released everything."""
        if self._teardown is not None:
            await asyncio.shield(self._teardown)

    async def _close_all(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        await self._stop_stream()
        if self._error is not None:
            await self.send_error(self._error)
        await self._close_peer()
        if not self.ws.closed:
            if self._error is None:  # a refusal is its error message and its close code, no bye
                await self.send({"type": "bye"})
            try:
                # close() waits for the client's close frame (up to the socket's timeout) and
                # for the buffers to drain: not longer than a send
                await asyncio.wait_for(self.ws.close(code=self._close_code, message=self._close_message),
                                       SEND_TIMEOUT)
            except TimeoutError:
                if self.connection is not None:
                    self.connection.abort()
            except (ConnectionError, RuntimeError):
                pass

    async def _close_peer(self) -> None:
        await self._stop_talk()
        peer, self.peer = self.peer, None
        if peer is not None:
            await peer.close()
        if self.reason is None and self._idle is None and self.stream is None:  # peerless again: the idle clock runs
            self._idle = asyncio.get_running_loop().call_later(self.config.idle_timeout, self._idle_expired)

    def _peer_ended(self, peer: PeerSession, reason: str) -> None:
        if peer is not self.peer:
            return
        error = None
        if reason == "negotiation timed out":
            error = f"closing: the connection was not established within {self.config.negotiation_timeout:g} s"
        self.end(reason, error=error)

    def _peer_state(self, peer: PeerSession) -> None:
        """The peer connected: the session becomes a viewer, if there is room for one more."""
        if peer is not self.peer or self.reason is not None or peer.state != "connected":
            return
        if not self.is_viewer and (refused := self.cameras.admit(self.camera, self)) is not None:
            self.refuse_full(refused)

    def _idle_expired(self) -> None:
        self._idle = None
        if self.peer is None and self.reason is None:
            self.end("idle", error=f"closing: no offer within {self.config.idle_timeout:g} s")


def parse_message(data: str) -> dict[str, Any]:
    """A client message as a dict with a string "type", or ProtocolError."""
    try:
        message = json.loads(data)
    except ValueError as exc:
        raise ProtocolError(f"invalid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("a message needs a string 'type'")
    return message


def websocket_handler(config: Config, cameras: Cameras,
                      ice: IceContext | None = None) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The `GET /ws` handler (`?camera=NAME`, default the first; `?quality=auto|main|low`): one
    viewer's session per websocket."""

    async def handler(request: web.Request) -> web.StreamResponse:
        remote = request.remote or "?"
        refusal = origin_refusal(request, config.allow_origins)
        if refusal is not None:
            log.warning(remote, "refused websocket from %s: " + REFUSAL, remote, *refusal)
            raise web.HTTPForbidden(text=f"refused: {REFUSAL % refusal}\n")
        try:
            camera = find_camera(request, cameras, config.token, request.query.get("camera"), auth_later=True)
        except web.HTTPUnauthorized:
            log.warning(remote, "refused websocket from %s: wrong token", remote)
            raise
        # (a token that came with the request was checked above; else the client sends an auth message)
        authorized = not config.token or "token" in request.query or bearer_token(request) is not None
        # no permessage-deflate: video does not compress, and deflating it would cost CPU per viewer
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_MESSAGE_SIZE, writer_limit=WRITE_BUFFER,
                                   compress=False)
        await ws.prepare(request)
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            transport.set_write_buffer_limits(high=WRITE_BUFFER)
        session = Session(ws, remote, config, camera, cameras, transport, ice)
        # ?quality=low (or ?tier=): as a {"type": "quality"} message before the offer would
        choice = request.query.get("quality", request.query.get("tier", "auto"))
        if choice in CHOICES and (choice == "auto" or choice in camera.qualities()):
            session.quality_choice = choice
        cameras.hold(camera, session)  # pending until its peer connects
        log.info(remote, "viewer %s connected to %s (%s)", remote, camera.name,
                 request.headers.get("User-Agent", "-"))
        try:
            await session.run(authorized)
        finally:
            session.end(session.reason or "socket closed")
            await session.closed()
        return ws

    return handler
