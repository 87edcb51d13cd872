"""A WebRTC viewer's peer connection: the checks its offer must pass, the codec it gets, its lifecycle."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiortc import RTCIceCandidate, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcpeerconnection import is_codec_compatible
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from av import AudioFrame

from ...config import Config
from ...media.encoder import H264_PROFILE
from ...media.feeds import Transport
from ...media.quality import CHOICES, TierReader
from ...seams import aiortc as aiortc_seam
from ..results import ResultFeed, SentPictures
from .audio import add_audio, make_audio_track, offer_sends_audio, wants_audio
from .contract import CameraView, PeerCamera
from .datachannel import DataChannels
from .ice import IceContext
from .quality import LinkWatch
from .rtcp import PeerGuard, guard_peer
from .rtpsend import RtpSendStats, RtpStream, forget_sent, send_rtp_once
from .tracks import CameraTrack, EncodedTrack, camera_codecs, make_track

logger = logging.getLogger(__name__)

#: seconds a peer's close may take before it is abandoned
CLOSE_TIMEOUT = 5.0
#: a viewer closed for sending nothing (--unresponsive-timeout) leaves with a reason starting so
UNRESPONSIVE = "unresponsive"
#: a silence check that runs later than this (seconds) found the event loop stalled: the viewer's
#: datagrams may still wait unread in the socket, so it looks again STALL_GRACE later instead
STALL_LATE = 0.5
STALL_GRACE = 2.0
#: what each codec name sends (a feed's `CodecInfo.codec`; its media kind is the MIME type's first
#: part); H.264 is constrained baseline so Safari plays it. Opus: for audio feeds (none is built yet)
CODEC_MIME = {"h264": "video/H264", "vp8": "video/VP8", "opus": "audio/opus"}
#: what an offer may hold, checked by counting before anything parses it (`screen_offer`): a
#: browser's offer has one to three m-lines and a few hundred lines; aiortc's handling of an offer
#: grows with each (200 m-lines in 34 KiB: 160 ms of the event loop and a 227 KB answer)
MAX_OFFER_MEDIA = 8
MAX_OFFER_LINES = 1000
MAX_OFFER_CANDIDATES = 64


class OfferError(ValueError):
    """An offer this server cannot answer; the message says why."""


class ServerFull(Exception):
    """No turn to negotiate came in time, or the server filled up while this one waited."""


def codec_preferences(codec: str) -> list[RTCRtpCodecCapability]:
    """The codecs a viewer's transceiver may use for `codec` (h264 or vp8, with RTX; opus)."""
    mime = CODEC_MIME[codec].lower()
    chosen = []
    for capability in RTCRtpSender.getCapabilities(mime.split("/")[0]).codecs:
        name = capability.mimeType.lower()
        if name == mime:
            if codec == "h264" and (
                capability.parameters.get("profile-level-id") != H264_PROFILE
                or str(capability.parameters.get("packetization-mode")) != "1"
            ):
                continue
            chosen.append(capability)
        elif name == "video/rtx":
            chosen.append(capability)
    return chosen


def screen_offer(sdp: str) -> None:
    """Raise OfferError if `sdp` holds more than an offer needs (m-lines, lines, candidates):
    counted, not parsed, so that refusing it costs less than the request (before a peer is made)."""
    media = sdp.count("\nm=") + sdp.startswith("m=")
    if media > MAX_OFFER_MEDIA:
        raise OfferError(f"the offer has {media} m-lines; at most {MAX_OFFER_MEDIA} are answered "
                         "(a viewer needs one recvonly video m-line)")
    candidates = sdp.count("\na=candidate:")
    if candidates > MAX_OFFER_CANDIDATES:
        raise OfferError(f"the offer has {candidates} candidates; at most {MAX_OFFER_CANDIDATES} are answered")
    lines = sdp.count("\n") + 1
    if lines > MAX_OFFER_LINES:
        raise OfferError(f"the offer has {lines} lines; at most {MAX_OFFER_LINES} are answered")


def offered_codecs(media: aiortc_sdp.MediaDescription, codecs: Sequence[str]) -> list[str]:
    """Those of `codecs` (names of CODEC_MIME) that `media`, an offer's m-line, carries in a form this
    server answers (aiortc's own test: for H.264, packetization-mode 1 and constrained baseline), in
    the order of `codecs`."""
    usable = []
    for codec in codecs:
        local = [RTCRtpCodecParameters(mimeType=c.mimeType, clockRate=c.clockRate, channels=c.channels,
                                       parameters=c.parameters)
                 for c in codec_preferences(codec) if not c.mimeType.lower().endswith("/rtx")]
        if any(is_codec_compatible(mine, theirs) for theirs in media.rtp.codecs for mine in local):
            usable.append(codec)
    return usable


def check_offer(sdp: str, codecs: str | Sequence[str]) -> str:
    """The codec to answer `sdp` with (read_offer)."""
    return read_offer(sdp, codecs)[0]


def read_offer(sdp: str, codecs: str | Sequence[str]) -> tuple[str, aiortc_sdp.SessionDescription]:
    """The codec to answer `sdp` with: the first of `codecs` (one name, or several of one media
    kind, the one preferred first) that the offer carries, and the parsed offer; OfferError unless
    `sdp` passes `screen_offer`, parses and asks to receive that media kind (video, audio) in one
    of them."""
    wanted_codecs = [codecs] if isinstance(codecs, str) else list(codecs)
    screen_offer(sdp)
    try:
        description = aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as exc:  # noqa: BLE001 - the parser raises many kinds
        raise OfferError(f"the SDP offer does not parse: {exc or type(exc).__name__}") from None
    kind = CODEC_MIME[wanted_codecs[0]].split("/")[0]
    wanted = [m for m in description.media if m.kind == kind]
    if not wanted:
        raise OfferError(f"the offer has no {kind} m-line; add a recvonly {kind} transceiver")
    media = wanted[0]
    if media.direction not in ("recvonly", "sendrecv"):
        raise OfferError(f"the offer's {kind} is {media.direction}; it must be recvonly or sendrecv")
    usable = offered_codecs(media, wanted_codecs)
    if not usable:
        names = " or ".join(CODEC_MIME[c].split("/")[1] for c in wanted_codecs)
        sends = wanted_codecs[0] + " only" if len(wanted_codecs) == 1 else " or ".join(wanted_codecs)
        raise OfferError(f"the offer has no {names} codec this server can send; it sends {sends}")
    return usable[0], description


def offers_actpass(description: aiortc_sdp.SessionDescription) -> bool:
    """Whether the offer leaves the DTLS role to the answer (`a=setup:actpass` on every m-line)."""
    return bool(description.media) and all(m.dtls is not None and m.dtls.role == "auto"
                                           for m in description.media)


async def negotiation_turn(camera: PeerCamera, sdp: str, ended: Callable[[], bool],
                           codecs: Sequence[str]) -> Callable[[], None] | None:
    """Wait for a turn to negotiate `sdp` (camtrack.media.load: a crowd's costly DTLS handshakes
    go a few at a time) and return what gives it back; None when the server measures no load.
    A bad offer (none of `codecs`, ...) is told so at once, not queued (OfferError); ServerFull when
    no turn came in time or the session `ended()` meanwhile."""
    load = camera.load
    if load is None:
        return None
    check_offer(sdp, codecs)
    turn = await load.handshake_turn()
    if turn is None or ended():
        if turn is not None:
            turn()
        raise ServerFull("server full")
    return turn


async def answer_offer(pc: RTCPeerConnection, sdp: str, track: MediaStreamTrack, codec: str,
                       ice: IceContext | None = None, offer: aiortc_sdp.SessionDescription | None = None) -> str:
    """Attach `track` to `pc`, answer `sdp` with `codec` only (one the offer carries: read_offer,
    whose parsed `offer` may be given), and return the answer SDP.

    The sending transceiver is created before the remote description is applied: aiortc
    honours codec preferences only then, not on a transceiver made from the offer. An `actpass`
    offer is answered `a=setup:passive`: the viewer opens the DTLS handshake and camtrack accepts
    it, whatever the viewer's certificate (aiortc's own choice, active, fails with RSA ones:
    GStreamer's webrtcbin).
    """
    if offer is None:
        _, offer = read_offer(sdp, codec)
    transceiver = pc.addTransceiver(track, direction="sendonly")
    transceiver.setCodecPreferences(codec_preferences(codec))
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    except Exception as exc:  # noqa: BLE001 - aiortc raises ValueError, OperationError, ...
        raise OfferError(f"the offer was refused: {exc or type(exc).__name__}") from None
    if offers_actpass(offer):
        aiortc_seam.answer_as_dtls_server(pc)
    if ice is not None:
        ice.prepare(pc)  # on the shared UDP port, before the answer names its ufrag
    answer = await pc.createAnswer()
    await pc.setLocalDescription(answer)
    return pc.localDescription.sdp


@dataclass(frozen=True)
class PeerTimeouts:
    """The seconds a peer waits (--negotiation-timeout, --disconnect-timeout, --unresponsive-timeout;
    0 unresponsive: never closed for silence)."""

    negotiation: float
    disconnect: float
    unresponsive: float

    @classmethod
    def of(cls, config: Config) -> PeerTimeouts:
        return cls(config.negotiation_timeout, config.disconnect_timeout, config.unresponsive_timeout)


#: makes the track a peer sends once its codec is negotiated (a name of CODEC_MIME)
TrackMaker = Callable[[str], "EncodedTrack | CameraTrack"]
#: makes the camera's sound track for an offer (None: none it takes)
AudioMaker = Callable[[aiortc_sdp.SessionDescription], Awaitable["EncodedTrack | None"]]


class Peer:
    """One WebRTC viewer of a camera: answers its offer, watches the connection, and calls
    `on_end(reason)` once when it fails, closes, stays disconnected or never connects (a
    camtrack.outputs.webrtc.contract.PeerSession). It sends the first of `codecs` its viewer's offer
    carries (the camera's own first), in a track `tracks(codec)` makes then: the camera's
    (make_track), or in a worker process the main process's packets, relayed."""

    def __init__(self, camera: PeerCamera, timeouts: PeerTimeouts, transport: Transport, remote: str,
                 on_end: Callable[[str], None], ice: IceContext, tracks: TrackMaker,
                 codecs: Sequence[str], processing: ResultFeed | None = None,
                 audio: AudioMaker | None = None) -> None:
        self.camera = camera
        self.timeouts = timeouts
        self.transport = transport
        self.remote = remote
        self.on_end = on_end
        #: the server's ICE side (its mux, TURN credentials, its STUN/TURN servers)
        self.ice = ice
        self.pc = RTCPeerConnection(self.ice.rtc_configuration())
        self.tracks = tracks
        #: the codecs it may send, the one it prefers first
        self.codecs = tuple(codecs)
        #: what it sends, once the offer is answered: its codec (one of `codecs`) and track
        self.codec: str | None = None
        self.track: EncodedTrack | CameraTrack | None = None
        #: makes the camera's sound track for an offer (camtrack.outputs.webrtc.audio: its codec from
        #: the offer), sent when the offer asks for audio; the track, once made, and what its RTP loop sent
        self.audio = audio
        self.audio_track: EncodedTrack | None = None
        self.audio_rtp: RtpSendStats | None = None
        #: the viewer's own sound, when its offer sends some to a camera it may talk to (talk.py):
        #: read as it comes (aiortc queues it without bound otherwise), each frame handed to
        #: `on_heard` while someone listens (a Talk), else dropped
        self.heard: MediaStreamTrack | None = None
        self.on_heard: Callable[[AudioFrame], None] | None = None
        self._hearing: asyncio.Task[None] | None = None
        self.connected = False
        self._ended = False
        self._closing: asyncio.Task[None] | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        #: the peer's protections against a hostile network (set once the offer is answered)
        self.guard: PeerGuard | None = None
        #: what camtrack's own RTP loop sent (shared packets only; per-viewer encoding keeps aiortc's)
        self.rtp: RtpSendStats | None = None
        #: gives back this peer's handshake turn (camtrack.media.load), once it connected or ended
        self._turn: Callable[[], None] | None = None
        #: remote candidates the viewer gave, in its offer and trickled (see add_candidate)
        self._remote_candidates = 0
        #: the RTP timestamps of the pictures sent lately, by capture time (shared packets only), for
        #: the processing results (none kept for a camera without a function)
        self.pictures = SentPictures() if processing is not None else None
        #: the viewer's data channel: the camera's processing results, if it has a function
        self.data = DataChannels(processing, self.pictures, f"{transport} viewer {remote} of {camera.name}",
                                 self._end)
        #: its link's samples and the server's choice of its tier (docs/quality.md), once answered
        self.link: LinkWatch | None = None
        #: the quality its viewer asked for (docs/quality.md), applied to its track once made
        self.quality_choice = "auto"
        self._quality_listeners: list[Callable[[], None]] = []
        self.pc.on("connectionstatechange", self._on_state)
        self.pc.on("datachannel", self.data.on_channel)
        self.pc.on("track", self._on_track)

    @property
    def hears(self) -> bool:
        """Whether its viewer sends sound (talk.Hearing)."""
        return self.heard is not None

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._hearing is None:
            self.heard = track
            self._hearing = asyncio.ensure_future(self._hear(track))

    async def _hear(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if self.on_heard is not None and isinstance(frame, AudioFrame):
                    self.on_heard(frame)
        except MediaStreamError:
            pass

    @property
    def tier_reader(self) -> TierReader | None:
        """Its track's reader of the camera's tiers (None: no track yet, or per-viewer encoding)."""
        track = self.track
        if isinstance(track, EncodedTrack) and isinstance(track.reader, TierReader):
            return track.reader
        return None

    def choose_quality(self, choice: str) -> None:
        if choice not in CHOICES:
            raise ValueError(f"quality must be one of {', '.join(CHOICES)}, not {choice!r}")
        reader = self.tier_reader
        if reader is not None:
            reader.choose(choice)
        self.quality_choice = choice
        self._quality_changed()

    def quality(self) -> dict[str, Any] | None:
        reader = self.tier_reader
        if reader is None:
            return None
        quality: dict[str, Any] = {"choice": reader.choice, "tier": reader.quality, "reason": reader.reason,
                                   "moving_to": reader.moving_to, "qualities": list(reader.available)}
        if (link := self.link) is not None:
            sample = link.sample
            quality["link"] = {"loss": sample.loss, "rtt": sample.rtt, "remb": sample.remb, "sent": sample.sent,
                               "nacked": sample.nacked, "verdict": link.auto.last}
        return quality

    def on_quality(self, callback: Callable[[], None]) -> None:
        self._quality_listeners.append(callback)

    def _moved(self, *_: str) -> None:
        """Its track moved to another tier (at the target's keyframe, before it is sent): what was
        sent of the tier it left is not resent on a NACK any more (docs/quality.md, "The move")."""
        for sender in self.pc.getSenders():
            if sender.track is not None and sender.track is self.track:
                forget_sent(sender)
        self._quality_changed()

    def _quality_changed(self, *_: str) -> None:
        for callback in list(self._quality_listeners):
            callback()

    @property
    def state(self) -> str:
        return str(self.pc.connectionState)

    def on_state(self, callback: Callable[[], None]) -> None:
        self.pc.on("connectionstatechange", callback)

    async def add_candidate(self, candidate: RTCIceCandidate | None) -> None:
        if candidate is None and not self._remote_candidates:
            # The end of candidates from a viewer that gave none, in its offer or trickled: headless
            # Chromium does that (no host candidate without a camera permission; an mDNS name that
            # cannot be resolved is the same), about 100 ms after its offer. aioice would fail the
            # connection at once ("no candidate pairs") though the viewer's own checks, arriving a
            # moment later, would make a peer-reflexive candidate that connects. So it is not passed
            # on: the checks make the pairs, and the negotiation timeout bounds the wait.
            logger.debug("%s viewer %s of %s: end of candidates before any candidate, not passed on",
                         self.transport, self.remote, self.camera.name)
            return
        self._remote_candidates += candidate is not None
        await self.pc.addIceCandidate(candidate)

    @property
    def negotiating(self) -> bool:
        return self.pc.connectionState in ("new", "connecting")

    async def answer(self, sdp: str) -> str:
        """The answer to `sdp` (OfferError if it cannot be answered, ServerFull if no turn to
        negotiate came in time); starts the negotiation clock.

        A crowd arriving at once negotiates a few at a time (DTLS handshakes are costly): the
        viewers already watching keep their pictures, and who waits too long is told so.
        """
        load = self.camera.load
        try:
            self._turn = await negotiation_turn(self.camera, sdp, lambda: self._ended, self.codecs)
            codec, offer = read_offer(sdp, self.codecs)
            # (its codec may wait for the camera's sound to open once: a stream's is learnt then)
            listening = await self.audio(offer) if self.audio is not None and wants_audio(offer) else None
            if self._ended:  # closed before it had a track: none is made (nothing would stop it)
                if listening is not None:
                    listening.stop()
                raise OfferError("the peer was closed")
            sending = self.tracks(codec)
            self.codec, self.track = codec, sending
            if (reader := self.tier_reader) is not None:
                reader.on_move = self._moved
                if self.quality_choice != "auto":
                    reader.choose(self.quality_choice)  # (before its first packet: it starts there)
            talks = bool(self.camera.settings.talk) and offer_sends_audio(offer)
            self.audio_track = listening
            if self.audio_track is not None or talks:
                add_audio(self.pc, self.audio_track, talks)
            answer = await answer_offer(self.pc, sdp, sending, codec, self.ice, offer)
            self._remote_candidates += sum(line.startswith("a=candidate:") for line in sdp.splitlines())
        except OfferError:
            self._give_turn_back()
            self.camera.meters[self.transport].negotiation_failures += 1
            raise
        if isinstance(sending, EncodedTrack):
            meter = self.camera.meters[self.transport]
            feed = id(sending.encoder)

            def on_sent(captured: float, seconds: float, handed: float) -> None:
                meter.wire_age.observe(max(0.0, handed - captured))
                if load is not None:
                    load.sent(feed, captured, seconds)

            track = sending

            def join(stream: RtpStream) -> Awaitable[None] | None:
                return track.join_fanout(stream, on_sent)

            # before guard_peer: its NACK cap reads the history this installs
            for sender in self.pc.getSenders():
                if sender.track is track:
                    self.rtp = send_rtp_once(sender, track.next_rtp_frame, on_sent, join, self.pictures)
        listening = self.audio_track
        if listening is not None:
            def join_audio(stream: RtpStream) -> Awaitable[None] | None:
                return listening.join_fanout(stream, None)

            for sender in self.pc.getSenders():
                if sender.track is listening:
                    self.audio_rtp = send_rtp_once(sender, listening.next_rtp_frame, None, join_audio)
        # before the answer leaves: from then on its ports are known to anyone who reads it
        self.guard = guard_peer(self.pc, sending, self.camera.settings.bitrate,
                                self.camera.settings.keyframe_interval,
                                f"{self.transport} viewer {self.remote} of {self.camera.name}")
        self._set_timer("negotiation", self.timeouts.negotiation, self._negotiation_expired)
        if (reader := self.tier_reader) is not None and len(reader.available) > 1:
            # the tier chosen from what its link reports, while it asks for auto (docs/quality.md)
            guard = self.guard
            for sender in self.pc.getSenders():
                if sender.track is sending:
                    self.link = LinkWatch(sender, reader, lambda: next(
                        (p.remb for p in guard.rtcp if p.remb is not None), None),
                        lambda: sum(p.nacked for p in guard.rtcp))
                    self.link.start()
        logger.info("%s viewer %s of %s: answered with %s %dx%d%s", self.transport, self.remote, self.camera.name,
                    codec, self.camera.settings.width, self.camera.settings.height,
                    "" if codec == self.codecs[0] else f" (its offer has no {self.codecs[0]})")
        return answer

    def _give_turn_back(self) -> None:
        turn, self._turn = self._turn, None
        if turn is not None:
            turn()

    async def close(self) -> None:
        """Stop the track and close the connection (idempotent, never cancelled half-way)."""
        self._ended = True
        self._give_turn_back()
        self.data.close()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._hearing is not None:
            self._hearing.cancel()
        if self._closing is None:
            link, self.link = self.link, None
            if link is not None:
                link.stop()
            if self.track is not None:
                self.track.stop()
            if self.audio_track is not None:
                self.audio_track.stop()
            # shielded: a close cancelled half-way leaves aiortc waiting forever on a second one
            self._closing = asyncio.ensure_future(self.pc.close())
        try:
            await asyncio.wait_for(asyncio.shield(self._closing), CLOSE_TIMEOUT)
        except TimeoutError:
            logger.warning("%s viewer %s: peer close timed out", self.transport, self.remote)

    def _end(self, reason: str) -> None:
        self._give_turn_back()
        if not self._ended:
            self._ended = True
            self.data.close()
            self.on_end(reason)

    def _set_timer(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()
        self._timers[name] = asyncio.get_running_loop().call_later(delay, callback)

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _negotiation_expired(self) -> None:
        self._timers.pop("negotiation", None)
        if self.pc.connectionState != "connected":
            self.camera.meters[self.transport].negotiation_failures += 1
            self._end("negotiation timed out")

    def _watch_silence(self, due: float | None = None, postponed: bool = False) -> None:
        """Close the peer once nothing came from its viewer for --unresponsive-timeout (a frozen
        viewer would keep its place, and be sent the stream, until ICE consent expires: 30 s);
        else look again when that time would be up. `due`: when this check was meant to run; a
        check that ran late (the event loop stood still) looks again once more, STALL_GRACE later,
        instead of closing peers whose viewers' datagrams wait unread."""
        self._timers.pop("silence", None)
        timeout = self.timeouts.unresponsive
        if not timeout or self.guard is None or self._ended:
            return
        now = asyncio.get_running_loop().time()
        silent = self.guard.hearing.silence()
        late = due is not None and now - due > STALL_LATE and not postponed
        if silent >= timeout and not late:
            self.camera.meters[self.transport].unresponsive += 1
            self._end(f"{UNRESPONSIVE}: nothing came from it for {silent:.0f} s")
            return
        wait = STALL_GRACE if late else max(timeout - silent, 0.1)
        self._set_timer("silence", wait, lambda: self._watch_silence(now + wait, postponed=late))

    def _on_state(self) -> None:
        state = self.pc.connectionState
        logger.debug("%s viewer %s: peer %s", self.transport, self.remote, state)
        if state == "connected":
            self._give_turn_back()
            self._cancel_timer("negotiation")
            self._cancel_timer("disconnected")
            if not self.connected:
                logger.info("%s viewer %s of %s: connected", self.transport, self.remote, self.camera.name)
                if self.guard is not None:
                    self.guard.hearing.heard()  # (the silence clock starts now)
                    self._watch_silence()
            self.connected = True
        elif state == "disconnected" and "disconnected" not in self._timers:
            self._set_timer("disconnected", self.timeouts.disconnect,
                            lambda: self._end("peer stayed disconnected"))
        elif state in ("failed", "closed"):
            if state == "failed" and not self.connected:
                self.camera.meters[self.transport].negotiation_failures += 1
            self._end(f"peer {state}")


class LocalPeers:
    """The peer factory (camtrack.outputs.webrtc.contract.PeerFactory) that makes every peer in
    this process, sending the camera's track (make_track) in the codec its viewer's offer has
    (camera_codecs: the camera's own, else the other)."""

    def __init__(self, config: Config, ice: IceContext) -> None:
        self.timeouts = PeerTimeouts.of(config)
        self.ice = ice

    def __call__(self, camera: CameraView, transport: Transport, remote: str,
                 on_end: Callable[[str], None]) -> Peer:
        return Peer(camera, self.timeouts, transport, remote, on_end, self.ice,
                    functools.partial(make_track, camera, transport), camera_codecs(camera), camera.processing,
                    audio=functools.partial(make_audio_track, camera, transport))
