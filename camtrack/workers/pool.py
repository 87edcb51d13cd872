"""The main process's side of the worker processes (`--workers`).

The main process keeps HTTP, signaling, the cameras and their encoders. A viewer's offer goes to
the least-loaded worker, which makes the peer (camtrack.workers.process) and answers. For each
camera a worker has viewers of, a pump reads the camera's packet feed once and writes each packet
once to that worker's socket; a worker that reads slowly is skipped ahead (newest wins, at most
MAX_LAG packets behind), so nothing queues without bound. The worker sends back its peers' states
(so admission, --max-viewers, /metrics, /healthz and shutdown see every viewer here), their
keyframe requests, and its counters. A worker that dies ends only its own viewers (their pages
reconnect) and is started again. A viewer whose offer lacks the camera's codec gets the camera's
tier of the other one (camtrack.media.tiers), relayed to its worker by a pump of its own (its
`feed_key`, chosen when the offer is: WorkerProcess.watch).

With `--workers N` (N > 1) N workers start with the server and take every WebRTC viewer. With
`--workers 0` (the default) the main process serves its viewers itself, and workers (up to one
per core) start only when it is busy sending to them (see `busy`): then newcomers go to them, and
a worker left without viewers for IDLE_STOP seconds stops again (see WorkerPool.place).

The workers share the main process's WebRTC port: each sends from a copy of its socket, and this
process, which alone reads it, hands each worker the datagrams for the peers it claimed (their
ICE ufrags) and at the addresses those peers proved (see UdpMux.claim and route_foreign).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiortc import RTCIceCandidate
from aiortc.sdp import candidate_to_sdp
from av import AudioFrame

from ..cameras import Cameras
from ..config import Config
from ..media import admission
from ..media.admission import ProcessLoad, Where
from ..media.encoder import JOIN_FRAMES
from ..media.feeds import FeedClosed, PacketFeed, Transport
from ..media.packet import CodecInfo, EncodedPacket, MediaKind
from ..media.passthrough import RING_PACKETS
from ..media.quality import CHOICES
from ..media.tiers import MAIN, Tier
from ..outputs.results import ResultFeed
from ..outputs.webrtc.audio import audio_tier_of, offer_wants_audio
from ..outputs.webrtc.contract import CameraView, PeerFactory, PeerSession
from ..outputs.webrtc.peer import CLOSE_TIMEOUT, UNRESPONSIVE, OfferError, check_offer, negotiation_turn
from ..outputs.webrtc.tracks import camera_codecs, own_codec
from ..outputs.webrtc.udpmux import Address, UdpMux
from . import wire

logger = logging.getLogger(__name__)

#: seconds a worker may take to start (import aiortc, bind its port) before the server gives up
START_TIMEOUT = 30.0
#: seconds between restarts of a worker that keeps dying: from the first, doubling to the last;
#: a worker that stayed up STABLE seconds starts again from the first
RESTART_DELAYS = (0.5, 10.0)
STABLE = 30.0
#: a worker that says nothing this long (it sends its counters every second) is stuck: it is killed,
#: which ends its viewers, and started again
WATCHDOG = 10.0
#: seconds workers get to exit when the server stops, before they are killed
STOP_GRACE = 1.5
#: a worker more than this many packets behind a camera is skipped to the newest (its tracks resync)
MAX_LAG = JOIN_FRAMES
#: --workers 0: a worker that has had no viewer this long is stopped (its memory given back), checked
#: every IDLE_CHECK seconds
IDLE_STOP = 60.0
IDLE_CHECK = 5.0
#: --workers 0: after a worker failed to start, none is started again for this long
GROW_RETRY = 10.0
#: bytes waiting for a worker in this process beyond which a datagram for its peers is dropped
#: rather than queued (UDP: their RTCP and STUN are resent or not needed; memory stays bounded);
#: one from an address none of its peers proved yet (a response to its check) is dropped past the
#: smaller bound, so what comes from proven addresses always finds room
DATAGRAM_BACKLOG = 256 * 1024
UNPROVEN_BACKLOG = 64 * 1024
#: packets a worker's ring of a shared encoder's feed holds: more than the encoder's own, because a
#: worker gets them in bursts when it was not scheduled for a while (the machine busy), and a burst
#: longer than its ring would make every one of its viewers resync and wait for a keyframe
RELAY_RING = 4 * JOIN_FRAMES
#: the socket's buffer to a worker (the kernel doubles it): a few keyframes, so a burst does not wait,
#: and what a stalled worker can leave queued (with the writer's 64 KiB and one packet) is this much
SOCKET_BUFFER = 128 * 1024
#: the directory that holds the camtrack package, for the workers' `python -m`
#: the loggers whose levels a worker takes from the main process (the first is its own, overall)
LOGGERS = ("camtrack", "aioice", "aiortc")
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent.parent)


class WorkerFailed(OSError):
    """A worker process could not start (its port is taken, it crashed at start)."""


def worker_count(config: Config) -> int:
    """How many worker processes there may be: --workers, 0 meaning one per core this process may use."""
    if config.workers:
        return config.workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class RemotePeer:
    """A viewer's peer in a worker process (a camtrack.outputs.webrtc.contract.PeerSession): answer, close, and
    `on_end(reason)` once when it fails, closes, stays disconnected, never connects, or its worker dies."""

    _ids = itertools.count(1)

    def __init__(self, worker: WorkerProcess | None, camera: CameraView, transport: Transport,
                 remote: str, on_end: Callable[[str], None], tier: Tier = MAIN) -> None:
        self.id = next(self._ids)
        self.worker = worker
        self.camera = camera
        #: the feed its worker relays to it: the camera's video of `tier`
        self.feed_key = wire.FeedKey(camera.name, MediaKind.VIDEO, tier)
        #: the camera's sound, relayed too when the offer asks for audio and the camera has some
        self.audio_key: wire.FeedKey | None = None
        #: the feeds its worker relays for it: its first one, then the tiers its reader there reads
        #: (two while it moves from one to another; docs/quality.md)
        self.feed_keys = {self.feed_key}
        #: what its viewer asked for, and its quality as its worker last told it
        self.quality_choice = "auto"
        self._quality: dict[str, Any] | None = None
        self._quality_listeners: list[Callable[[], None]] = []
        self._offered = False
        self.transport = transport
        self.remote = remote
        self.on_end = on_end
        #: its connection's state, as the worker tells it, and who listens to its changes
        self.state = "new"
        self._listeners: list[Callable[[], None]] = []
        self.connected = False
        self._ended = False
        self._answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._closed: asyncio.Future[None] | None = None
        #: gives back this peer's handshake turn (camtrack.media.load), once it connected or ended
        self._turn: Callable[[], None] | None = None
        #: whether its viewer sends sound (its worker's peer hears it: a talk.Hearing), who takes it
        #: while the viewer talks (a talk.Talk, here: one talker per camera across processes), and
        #: the frames its worker relayed of it
        self.hears = False
        self._on_heard: Callable[[AudioFrame], None] | None = None
        self.heard_frames = 0
        if worker is not None:
            worker.add(self)

    @property
    def on_heard(self) -> Callable[[AudioFrame], None] | None:
        return self._on_heard

    @on_heard.setter
    def on_heard(self, callback: Callable[[AudioFrame], None] | None) -> None:
        """Someone takes (or no longer takes) what its viewer says: its worker relays it meanwhile."""
        listening = self._on_heard is not None
        self._on_heard = callback
        if (callback is not None) != listening and not self._ended:
            self.send({"t": "hear", "on": callback is not None})

    @property
    def negotiating(self) -> bool:
        return self.state in ("new", "connecting")

    def on_state(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            for callback in list(self._listeners):
                callback()

    async def add_candidate(self, candidate: RTCIceCandidate | None) -> None:
        self.send({"t": "candidate", "candidate": None if candidate is None else candidate_to_sdp(candidate),
                   "sdpMid": None if candidate is None else candidate.sdpMid,
                   "sdpMLineIndex": None if candidate is None else candidate.sdpMLineIndex})

    def send(self, message: dict[str, Any]) -> None:
        if self.worker is not None:
            self.worker.send({**message, "id": self.id})

    async def answer(self, sdp: str) -> str:
        """The worker's answer to `sdp` (OfferError if it cannot be answered or no worker can)."""
        if self.worker is None or not self.worker.ready:
            self.camera.meters[self.transport].negotiation_failures += 1
            raise OfferError("no worker process is ready to take a viewer; try again shortly")
        # a crowd negotiates a few at a time across every worker, as in one process (Peer.answer)
        codecs = camera_codecs(self.camera)
        try:
            self._turn = await negotiation_turn(self.camera, sdp, lambda: self._ended, codecs)
            codec = check_offer(sdp, codecs)
        except OfferError:
            self._give_turn_back()
            self.camera.meters[self.transport].negotiation_failures += 1
            raise
        # the sound's feed: Opus, or the camera's own G.711 when the offer takes it (learnt here, where
        # the camera is: its stream opened once if it never was)
        sound = None
        if self.camera.packets(MediaKind.AUDIO) is not None and offer_wants_audio(sdp):
            sound = await audio_tier_of(self.camera, sdp)
        if self._ended or not self.worker.ready:
            self._give_turn_back()
            raise OfferError("the peer was closed")
        # the feed of the chosen codec relayed (attached and announced) before the offer is sent:
        # the worker has it to answer with
        # (a viewer that asked for a lower quality starts on it: the camera's main tier is not relayed for it)
        quality = self.quality_choice if self.quality_choice not in ("auto", "main") else None
        self.worker.watch(self, Tier(None if codec == own_codec(self.camera) else codec, quality))
        if sound is not None:
            self.audio_key = wire.FeedKey(self.camera.name, MediaKind.AUDIO, sound)
            self.worker.relay_audio(self)
        self._offered = True
        self.send({"t": "offer", "camera": self.camera.name, "feed": self.feed_key.wire,
                   "audio": self.audio_key.wire if self.audio_key is not None else None,
                   "transport": str(self.transport), "remote": self.remote, "sdp": sdp,
                   "qualities": self.camera.qualities(), "quality": self.quality_choice})
        reply = await asyncio.shield(self._answer)
        if "sdp" not in reply:
            self._give_turn_back()
            raise OfferError(reply.get("error", "the worker could not answer"))
        self._quality = reply.get("quality")
        self.hears = bool(reply.get("hears"))
        logger.debug("%s viewer %s of %s: answered by worker %d", self.transport, self.remote, self.camera.name,
                     self.worker.index)
        return str(reply["sdp"])

    def choose_quality(self, choice: str) -> None:
        """Its viewer asks for `choice` (auto, main, low): its worker's peer moves (docs/quality.md),
        or, before the offer, starts there."""
        if choice not in CHOICES:
            raise ValueError(f"quality must be one of {', '.join(CHOICES)}, not {choice!r}")
        qualities = self.camera.qualities()
        if choice != "auto" and choice not in qualities:
            raise ValueError(f"this camera has no {choice} tier (it has {', '.join(qualities)})")
        self.quality_choice = choice
        if self._offered:
            self.send({"t": "quality", "choice": choice})

    def quality(self) -> dict[str, Any] | None:
        return self._quality

    def on_quality(self, callback: Callable[[], None]) -> None:
        self._quality_listeners.append(callback)

    def reading(self, keys: set[wire.FeedKey]) -> None:
        """Its reader in the worker reads the feeds `keys` now: each is relayed there, and one it
        left stops when no one else there reads it."""
        if self.worker is None or self._ended:
            return
        old, self.feed_keys = self.feed_keys, set(keys)
        for key in keys - old:
            self.worker.relay(key, self.camera)
        for key in old - keys:
            self.worker.unrelay(key)

    def _give_turn_back(self) -> None:
        turn, self._turn = self._turn, None
        if turn is not None:
            turn()

    async def close(self) -> None:
        """Close the worker's peer (idempotent, never cancelled half-way; not longer than CLOSE_TIMEOUT)."""
        self._ended = True
        self._give_turn_back()
        if not self._answer.done():
            # closed while its worker answers (the session ended): an answer of nothing, which the
            # session, ended, does not send (as a local Peer closed half-way answers)
            self._answer.set_result({"sdp": ""})
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
            worker = self.worker
            if worker is None or not worker.ready:
                self._closed.set_result(None)
            else:
                worker.remove(self, keep=True)  # (its pump may stop now; the close reply still comes here)
                self.send({"t": "close"})
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), CLOSE_TIMEOUT)
        except TimeoutError:
            logger.warning("%s viewer %s: worker peer close timed out", self.transport, self.remote)
        if self.worker is not None:
            self.worker.forget(self)

    def message(self, message: dict[str, Any]) -> None:
        """A message about this peer from its worker."""
        kind = message["t"]
        if kind == "state":
            if message["state"] == "connected":
                self.connected = True
                self._give_turn_back()
            self._set_state(message["state"])
        elif kind == "ended":
            self._end(message["reason"])
        elif kind == "answer":
            if not self._answer.done():
                self._answer.set_result(message)
        elif kind == "closed":
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)
        elif kind == "reading":
            self.reading({wire.FeedKey.parse(name) for name in message["feeds"]})
        elif kind == "heard":
            taker = self._on_heard
            if taker is not None:
                try:
                    frame = wire.frame_of(message)
                except (KeyError, TypeError, ValueError) as exc:
                    logger.debug("%s viewer %s: a relayed sound frame skipped: %s", self.transport, self.remote, exc)
                    return
                self.heard_frames += 1
                taker(frame)
        elif kind == "quality":
            self._quality = message["quality"]
            for callback in list(self._quality_listeners):
                callback()

    def lost(self, reason: str) -> None:
        """Its worker died: the peer went with it."""
        if not self._answer.done():
            self._answer.set_result({"error": reason})
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        self.state = "closed"  # (no event: the session ends through on_end)
        self._end(reason)

    def _end(self, reason: str) -> None:
        self._give_turn_back()
        if not self._ended:
            self._ended = True
            if reason.startswith(UNRESPONSIVE):  # (the worker's own meter does not come back)
                self.camera.meters[self.transport].unresponsive += 1
            self.on_end(reason)


class Pump:
    """One feed of a camera (its `key`: the camera, media kind and tier) to one worker: each packet
    read once from the feed, written once."""

    def __init__(self, worker: WorkerProcess, camera: CameraView, key: wire.FeedKey, feed: PacketFeed) -> None:
        self.worker = worker
        self.camera = camera
        self.key = key
        #: its name on the wire (made once: every packet carries it)
        self.name = key.wire
        self.feed = feed
        self.kind = "encoder" if feed.makes_keyframes else "passthrough"
        self.sent = 0
        #: packets this worker never got: it read too slowly, and newer ones went instead
        self.skipped = 0
        self._codec: CodecInfo | None = None
        self._stopped = False
        # attached and announced before the first offer is sent: the worker has the feed to answer with
        feed.attach(self)
        self._announce(feed.codec)
        self._task = asyncio.ensure_future(self._run())

    def _announce(self, codec: CodecInfo) -> None:
        self._codec = codec
        self.worker.send({"t": "feed", "feed": self.name, "camera": self.camera.name, "codec": codec,
                          "kind": self.kind, "ring": RING_PACKETS if self.kind == "passthrough" else RELAY_RING})

    def _send(self, packet: EncodedPacket) -> None:
        if packet.codec != self._codec:
            self._announce(packet.codec)
        self.sent += 1
        self.worker.sent[self.camera.name] += 1
        self.worker.write(self.worker.pool.frame(self.name, packet))

    async def _run(self) -> None:
        after = 0
        try:
            for packet in self.feed.start_packets():
                self._send(packet)
                after = packet.seq
            while not self._stopped:
                latest = self.feed.latest
                ask = after
                if after and latest is not None and latest.seq - after > MAX_LAG:
                    ask = latest.seq - 1  # newest wins: this worker read too slowly
                read = await self.feed.next_packet(ask)
                if self._stopped:
                    break
                if after and read.item.seq > after + 1:
                    self.skipped += read.item.seq - after - 1
                    self.worker.skipped[self.camera.name] += read.item.seq - after - 1
                self._send(read.item)
                after = read.item.seq
                await self.worker.drain()
        except (FeedClosed, ConnectionError):
            pass
        finally:
            self.stop()

    def stop(self, tell: bool = True) -> None:
        """Stop reading the camera (at once, so a new pump of it can start right after)."""
        if self._stopped:
            return
        self._stopped = True
        self.feed.detach(self)
        if self.worker.pumps.get(self.key) is self:
            del self.worker.pumps[self.key]
            if tell:
                self.worker.send({"t": "unfeed", "feed": self.name})
        if self._task is not asyncio.current_task():
            self._task.cancel()


class ResultPump:
    """A camera's processing results (and its status, a few times a second) to one worker while it
    has viewers of the camera: each result written once, whatever the number of viewers there;
    newest wins (a worker that reads slowly gets the newest when it has read the last). It keeps the
    processing running (attached to the stage) only while the worker says some viewer there reads
    the results (an open data channel: `reading`), as a viewer's data channel does in this process:
    a WHEP or GStreamer viewer without one does not keep a passed-through camera's decoder and
    function running for nobody."""

    #: seconds between status messages (the worker's viewers' rates are differences of its counters)
    STATUS_INTERVAL = 0.25

    def __init__(self, worker: WorkerProcess, camera: str, stage: ResultFeed) -> None:
        self.worker = worker
        self.camera = camera
        self.stage = stage
        self.sent = 0
        #: whether the worker has readers of the results (attached to the stage meanwhile)
        self.attached = False
        # (before the first offer: the worker's peers of the camera read its relayed results)
        worker.send({"t": "results", "camera": camera})
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        stage, loop = self.stage, asyncio.get_running_loop()
        after = 0
        status_due = loop.time()
        try:
            while True:
                if loop.time() >= status_due:
                    self.worker.send({"t": "result_status", "camera": self.camera, "describe": stage.describe(),
                                      "calls": stage.stats.calls, "seconds": stage.stats.seconds})
                    status_due = loop.time() + self.STATUS_INTERVAL
                try:
                    result = await asyncio.wait_for(stage.next_result(after), max(0.0, status_due - loop.time()))
                except TimeoutError:
                    continue
                after = result.frame
                # (its JSON text, made once on the processing thread and at most MAX_DATA: never the object)
                self.worker.send({"t": "result", "camera": self.camera, "frame": result.frame, "time": result.time,
                                  "text": result.text})
                self.sent += 1
                await self.worker.drain()
        except ConnectionError:
            pass
        except FeedClosed:
            # (the stage stopped under it: its camera closed, the server shuts down; the worker's
            # next viewer of the camera starts a pump again)
            logger.debug("camera %s: processing stopped; results to worker %d end", self.camera, self.worker.index)
        finally:
            self.reading(False)
            if self.worker.result_pumps.get(self.camera) is self:
                del self.worker.result_pumps[self.camera]

    def reading(self, reading: bool) -> None:
        """The worker has readers of the results (`reading`), or no more."""
        if reading and not self.attached and not self._task.done():
            self.attached = True
            self.stage.attach(self)
        elif not reading and self.attached:
            self.attached = False
            self.stage.detach(self)

    def stop(self) -> None:
        self.reading(False)
        self._task.cancel()


class WorkerProcess:
    """One worker process, started again when it dies, and what the main process knows of it."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        #: the shared UDP port its peers use, the main process's (0: a random port per peer)
        self.port = pool.mux.port if pool.mux is not None else 0
        #: its peers' ufrags on the shared port, and datagrams for them dropped (it read too slowly)
        self.ufrags: set[str] = set()
        self.datagrams_dropped = 0
        #: what the main process's mux refused to hand over for its peers, by why (UdpMux.claim)
        self.refused: Counter[str] = Counter()
        self.pid: int | None = None
        self.ready = False
        self.starts = 0
        #: its peers (pending and connected); those closing stay until their close is answered
        self.peers: dict[int, RemotePeer] = {}
        self.closing: dict[int, RemotePeer] = {}
        #: what it is relayed: a pump per feed of a camera its viewers watch
        self.pumps: dict[wire.FeedKey, Pump] = {}
        #: the processing results relayed to it, by camera (of cameras with a function its viewers watch)
        self.result_pumps: dict[str, ResultPump] = {}
        #: what its last stats said: peers, packets received per camera
        self.stats: dict[str, Any] = {}
        #: over the server's life, per camera: packets written to this worker, packets it was skipped
        #: ahead of (it read too slowly), and its keyframe requests
        self.sent: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.keyframe_requests = 0
        #: its viewers' moves between quality tiers over the server's life, by (camera, from, to, why)
        self.tier_moves: Counter[tuple[str, str, str, str]] = Counter()
        self._moves_seen: dict[tuple[str, str, str, str], int] = {}
        #: (--workers 0) since when it has had no viewer, while it runs
        self.idle_since: float | None = None
        self._meters: dict[tuple[str, str], tuple[int, int, int]] = {}
        self._wire_seen: dict[tuple[str, str], tuple[list[int], float]] = {}
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def load(self) -> int:
        return len(self.peers)

    @property
    def running(self) -> bool:
        """Started (or being started again after it died), and not stopped."""
        return self.ready or self._task is not None

    def describe(self) -> dict[str, Any]:
        return {"index": self.index, "pid": self.pid, "ready": self.ready, "port": self.port, "starts": self.starts,
                "peers": len(self.peers), "cameras": sorted({key.camera for key in self.pumps}),
                "feeds": sorted(key.wire for key in self.pumps),
                "sent": dict(self.sent), "skipped": dict(self.skipped), "buffered": self.buffered,
                "keyframe_requests": self.keyframe_requests, "datagrams_dropped": self.datagrams_dropped,
                "refused": dict(self.refused),
                # its viewers on each quality tier now (by "camera/quality") and their moves
                "tiers": self.stats.get("tiers", {}) if self.ready else {},
                "tier_moves": [(*key, count) for key, count in self.tier_moves.items()],
                "received": self.stats.get("received", {}), "mux": self.stats.get("mux", {})}

    # -- the socket

    @property
    def buffered(self) -> int:
        """Bytes written to the worker that wait in this process (not yet in the socket's buffer)."""
        writer = self._writer
        return writer.transport.get_write_buffer_size() if writer is not None else 0

    def send(self, message: dict[str, Any]) -> None:
        self.write(wire.control(message))

    def write(self, frame: bytes) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(frame)

    def forward(self, data: bytes, remote: Address, proven: bool = True) -> None:
        """A datagram that arrived on the shared port for one of its peers (from an address one of
        them proved, or not yet)."""
        if self.buffered > (DATAGRAM_BACKLOG if proven else UNPROVEN_BACKLOG):
            self.datagrams_dropped += 1
            return
        self.write(wire.datagram(remote, data))

    async def drain(self) -> None:
        if self._writer is None:
            raise ConnectionError("worker gone")
        await self._writer.drain()

    # -- peers

    def add(self, peer: RemotePeer) -> None:
        self.peers[peer.id] = peer
        self.relay(peer.feed_key, peer.camera)
        processing = peer.camera.processing
        if processing is not None and peer.camera.name not in self.result_pumps:
            self.result_pumps[peer.camera.name] = ResultPump(self, peer.camera.name, processing)

    def watch(self, peer: RemotePeer, tier: Tier) -> None:
        """`peer` watches its camera's `tier` now (its offer chose the codec): that feed is relayed
        here, and the one it was made with stops when no one else here watches it."""
        old = peer.feed_key
        peer.feed_key = wire.FeedKey(old.camera, old.kind, tier)
        if peer.feed_key != old:
            peer.feed_keys = {peer.feed_key}
            self.relay(peer.feed_key, peer.camera)
            self.unrelay(old)

    def relay_audio(self, peer: RemotePeer) -> None:
        """`peer` listens too: its camera's sound is relayed here (once, whatever its listeners here)."""
        if peer.audio_key is not None:
            self.relay(peer.audio_key, peer.camera)

    def relay(self, key: wire.FeedKey, camera: CameraView) -> None:
        """Relay `key` here (a pump per feed, made at first need)."""
        if key in self.pumps:
            return
        try:
            feed = camera.packets(key.kind, key.tier)
        except ValueError as exc:  # (a tier the camera lacks: the worker's reader waits in vain, never asked so)
            logger.warning("worker %d asked for %s: %s", self.index, key.wire, exc)
            return
        if feed is not None:
            self.pumps[key] = Pump(self, camera, key, feed)

    def unrelay(self, key: wire.FeedKey) -> None:
        """Stop relaying `key` here if no viewer here reads it (nor, then, its camera's results if
        none watches the camera)."""
        if not any(key in p.feed_keys or key == p.audio_key for p in self.peers.values()):
            pump = self.pumps.get(key)
            if pump is not None:
                pump.stop()
        if not any(p.feed_key.camera == key.camera for p in self.peers.values()):
            results = self.result_pumps.pop(key.camera, None)
            if results is not None:
                results.stop()

    def remove(self, peer: RemotePeer, keep: bool = False) -> None:
        """`peer` is no viewer here any more (kept to hear its close reply if `keep`); the last viewer
        of a feed here stops its pump."""
        if self.peers.pop(peer.id, None) is not None and keep:
            self.closing[peer.id] = peer
        for key in peer.feed_keys:
            self.unrelay(key)
        if peer.audio_key is not None:
            self.unrelay(peer.audio_key)

    def forget(self, peer: RemotePeer) -> None:
        self.closing.pop(peer.id, None)
        self.remove(peer)

    # -- the process

    async def start(self) -> None:
        """Start the process and wait until it is ready (WorkerFailed if it is not)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)}
        mux = self.pool.mux
        # the shared UDP socket goes to the worker too: its peers send from the one port
        mux_fd = mux.sock.fileno() if mux is not None and mux.sock is not None else None
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "camtrack.workers.process", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),) + ((mux_fd,) if mux_fd is not None else ()),
                env=env, stdin=asyncio.subprocess.DEVNULL)
        finally:
            theirs.close()
        self.starts += 1
        self.pid = self._process.pid
        self._reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        self.send({"t": "init", "config": self.pool.config, "index": self.index, "mux_fd": mux_fd,
                   "addresses": self.pool.addresses,
                   # (what this process logs, the worker logs: the libraries' levels too)
                   "log_levels": {name: logging.getLogger(name).getEffectiveLevel() for name in LOGGERS}})
        try:
            reply = await asyncio.wait_for(wire.read(self._reader), START_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            await self._reap()
            raise WorkerFailed(f"worker {self.index} did not start ({type(exc).__name__})") from None
        if not isinstance(reply, dict) or reply.get("t") != "ready":
            await self._reap()
            error = reply.get("error", "no reason given") if isinstance(reply, dict) else "a packet"
            raise WorkerFailed(f"worker {self.index} did not start: {error}")
        self.ready = True
        self._meters.clear()
        self._moves_seen.clear()
        logger.info("worker %d (pid %d) serves WebRTC viewers%s", self.index, self.pid,
                    f" on UDP port {reply['port']}" if reply["port"] else "")
        self._task = asyncio.ensure_future(self._supervise())

    async def _supervise(self) -> None:
        """Read the worker's messages until it goes; then end its viewers and start it again."""
        started = time.monotonic()
        reason = "worker process exited"
        assert self._reader is not None
        try:
            while True:
                message = await asyncio.wait_for(wire.read(self._reader), WATCHDOG)
                if isinstance(message, dict):
                    self._message(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ValueError as exc:
            reason = f"worker process misbehaved: {exc}"
        except TimeoutError:
            reason = f"worker process said nothing for {WATCHDOG:g} s"
            if self._process is not None and self._process.returncode is None:
                self._process.kill()
        except asyncio.CancelledError:
            return  # stopped by the pool: it does the rest
        self._lost(reason)
        code = await self._reap()
        if self.pool.stopping:
            return
        logger.warning("worker %d (pid %s) %s (status %s); its viewers were disconnected, restarting it",
                       self.index, self.pid, reason.removeprefix("worker process "), code)
        delay = RESTART_DELAYS[0]
        if time.monotonic() - started < STABLE:
            delay = min(RESTART_DELAYS[1], RESTART_DELAYS[0] * 2 ** min(self.starts, 8))
        while not self.pool.stopping:
            await asyncio.sleep(delay)
            if self.pool.stopping:
                return
            try:
                await self.start()
                return
            except (WorkerFailed, OSError) as exc:
                logger.warning("%s; trying again in %g s", exc, delay)
                delay = min(RESTART_DELAYS[1], delay * 2)

    def _message(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        mux = self.pool.mux
        if kind == "route":
            if mux is not None and message["ufrag"] in self.ufrags:
                host, port = message["remote"]
                mux.route_foreign(message["ufrag"], (str(host), int(port)))
        elif kind == "transaction":
            if mux is not None and message["ufrag"] in self.ufrags:
                mux.expect(message["ufrag"], message["id"])
        elif kind == "ufrag":
            if mux is not None:
                if mux.claim(message["ufrag"], message["password"], self.forward, self.refused):
                    self.ufrags.add(message["ufrag"])
                else:
                    logger.warning("worker %d: ICE ufrag %r is another peer's already", self.index, message["ufrag"])
        elif kind == "unufrag":
            if mux is not None and message["ufrag"] in self.ufrags:
                self.ufrags.discard(message["ufrag"])
                mux.release(message["ufrag"])
        elif kind == "keyframe":
            self.keyframe_requests += 1
            key = wire.FeedKey.parse(message["feed"])
            camera = self.pool.cameras.get(key.camera)
            try:
                feed = camera.packets(key.kind, key.tier) if camera is not None else None
            except ValueError:  # (a tier the camera lacks: nothing to ask)
                feed = None
            if feed is not None:
                feed.request_keyframe()
        elif kind == "result_readers":
            pump = self.result_pumps.get(message["camera"])
            if pump is not None:
                pump.reading(bool(message["reading"]))
        elif kind == "stats":
            self._report_sends(message)
            self.stats = message
            self._add_meters(message["meters"])
            self._add_wire_ages(message.get("wire", {}))
            for camera_name, before, after, why, count in message.get("moves", []):
                move = (str(camera_name), str(before), str(after), str(why))
                self.tier_moves[move] += int(count) - self._moves_seen.get(move, 0)
                self._moves_seen[move] = int(count)
        elif "id" in message:
            peer = self.peers.get(message["id"]) or self.closing.get(message["id"])
            if peer is not None:
                peer.message(message)

    def _add_meters(self, meters: dict[str, dict[str, tuple[int, int, int]]]) -> None:
        """The worker's counters (totals since it started) added to the cameras' meters."""
        for name, by_transport in meters.items():
            camera = self.pool.cameras.get(name)
            if camera is None:
                continue
            for transport, totals in by_transport.items():
                seen = self._meters.get((name, transport), (0, 0, 0))
                meter = camera.meters[Transport(transport)]
                meter.frames += totals[0] - seen[0]
                meter.bytes += totals[1] - seen[1]
                meter.negotiation_failures += totals[2] - seen[2]
                self._meters[(name, transport)] = totals

    def _report_sends(self, message: dict[str, Any]) -> None:
        """What the worker's sends cost since its last stats, to the admission control (each worker
        has a loop of its own: its viewers fit its own send budget)."""
        previous = self.stats.get("sends"), self.stats.get("at")
        now, at = message.get("sends"), message.get("at")
        if previous[0] is None or previous[1] is None or now is None or at is None:
            return
        pictures, sends, seconds = (b - a for a, b in zip(previous[0], now, strict=True))
        if pictures > 0 and sends > 0 and at > previous[1]:
            viewers = sends / pictures  # its viewers, on average over the interval
            self.pool.cameras.load.report(f"worker {self.index}", seconds / sends, seconds / (at - previous[1]) / viewers)

    def _add_wire_ages(self, wire_ages: dict[str, dict[str, tuple[list[int], float]]]) -> None:
        """The worker's capture-to-wire histograms (totals since it started) added to the cameras'."""
        for name, by_transport in wire_ages.items():
            camera = self.pool.cameras.get(name)
            if camera is None:
                continue
            for transport, (counts, total) in by_transport.items():
                key = (name, "wire " + transport)
                seen_counts, seen_total = self._wire_seen.get(key, ([0] * len(counts), 0.0))
                histogram = camera.meters[Transport(transport)].wire_age
                for i, count in enumerate(counts):
                    histogram.counts[i] += count - seen_counts[i]
                histogram.total += total - seen_total
                self._wire_seen[key] = (counts, total)

    def _lost(self, reason: str) -> None:
        self.ready = False
        if self.pool.mux is not None:
            for ufrag in self.ufrags:
                self.pool.mux.release(ufrag)
        self.ufrags.clear()
        for pump in list(self.pumps.values()):
            pump.stop(tell=False)
        for results in self.result_pumps.values():
            results.stop()
        self.result_pumps.clear()
        peers = list(self.peers.values()) + list(self.closing.values())
        self.peers.clear()
        self.closing.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for peer in peers:
            peer.lost(reason)

    async def _reap(self) -> int | None:
        process = self._process
        if process is None:
            return None
        try:
            return await asyncio.wait_for(process.wait(), STOP_GRACE)
        except TimeoutError:
            process.kill()
            return await process.wait()

    async def stop(self) -> None:
        """Tell the worker to exit; kill it if it has not within STOP_GRACE."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        if self._writer is not None and not self._writer.is_closing():
            self.send({"t": "exit"})
        self._lost("server shutting down")
        await self._reap()


class WorkerPool:
    """The worker processes of a server, and the choice of one for each new viewer."""

    def __init__(self, config: Config, cameras: Cameras, count: int, addresses: list[str],
                 mux: UdpMux | None = None, on_demand: bool = False) -> None:
        self.config = config
        self.cameras = cameras
        #: the --ice-address addresses, resolved: what every worker offers
        self.addresses = addresses
        #: the shared WebRTC port's socket, which the workers send from too (None: --webrtc-port 0)
        self.mux = mux
        self.stopping = False
        #: each camera's newest packet as a frame: made once, written to every worker that wants it
        self._frames: dict[str, tuple[EncodedPacket, bytes]] = {}
        self.workers = [WorkerProcess(self, i + 1) for i in range(count)]
        #: --workers 0: workers start when this process is busy (see `place`), not with the server
        self.on_demand = on_demand
        self._growing: asyncio.Task[None] | None = None
        self._grow_failed = -GROW_RETRY
        self._idle_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start every worker (at once); WorkerFailed, with all of them stopped, if one cannot start.
        On demand, none starts now."""
        if self.on_demand:
            self._idle_task = asyncio.ensure_future(self._stop_idle())
            return
        results = await asyncio.gather(*(w.start() for w in self.workers), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.stop()
            raise failed[0]

    def frame(self, feed: str, packet: EncodedPacket) -> bytes:
        """`packet` of the feed named `feed` (wire.FeedKey) as a frame for the workers' sockets (made
        once per packet)."""
        cached = self._frames.get(feed)
        if cached is not None and cached[0] is packet:
            return cached[1]
        frame = wire.packet(feed, packet.seq, packet.packet.pts or 0, packet.captured, packet.keyframe,
                            bytes(packet.packet))
        self._frames[feed] = (packet, frame)
        return frame

    def local_viewers(self) -> int:
        """WebRTC viewers (pending ones too) served by this process."""
        everyone = sum(len(c.viewers[Transport.WEBSOCKET]) + len(c.viewers[Transport.WHEP]) for c in self.cameras)
        return max(0, everyone - sum(w.load for w in self.workers))

    def place(self) -> tuple[bool, WorkerProcess | None]:
        """Where a newcomer's peer goes: (False, None) for this process, or (True, the worker; None
        when none is ready, and the offer is refused), as camtrack.media.admission.place decides
        from this process's WebRTC viewers and sends and each ready worker's (busy: SPILL_VIEWERS,
        SPILL_SEND_CPU there); it may say to start the next worker (on demand), which is done here."""
        load = self.cameras.load
        here = ProcessLoad(self.local_viewers(), send_cpu=load.viewer_send_cpu) if self.on_demand else ProcessLoad()
        workers = [ProcessLoad(w.load, send_cpu=load.reported_viewer_cpu(f"worker {w.index}")) if w.ready else None
                   for w in self.workers]
        placement = admission.place(self.on_demand, here, workers)
        if placement.grow:
            self._grow()
        if placement.where is Where.LOCAL:
            return False, None
        return True, None if placement.worker is None else self.workers[placement.worker]

    def _grow(self) -> None:
        """Start the next stopped worker, if none is starting (on demand)."""
        if self._growing is not None or self.stopping or time.monotonic() - self._grow_failed < GROW_RETRY:
            return
        worker = next((w for w in self.workers if not w.running), None)
        if worker is None:
            return  # one per core already

        async def grow(worker: WorkerProcess) -> None:
            try:
                logger.info("busy (%d viewers here, %s in workers): starting worker %d", self.local_viewers(),
                            [w.load for w in self.workers if w.ready], worker.index)
                await worker.start()
            except (WorkerFailed, OSError) as exc:
                logger.warning("%s; serving newcomers here", exc)
                self._grow_failed = time.monotonic()
            finally:
                self._growing = None

        self._growing = asyncio.ensure_future(grow(worker))

    async def _stop_idle(self) -> None:
        """On demand: stop each worker that has had no viewer for IDLE_STOP seconds."""
        while True:
            await asyncio.sleep(IDLE_CHECK)
            now = time.monotonic()
            for worker in self.workers:
                if not worker.ready or worker.peers or worker.closing:
                    worker.idle_since = None
                elif worker.idle_since is None:
                    worker.idle_since = now
                elif now - worker.idle_since >= IDLE_STOP:
                    worker.idle_since = None
                    logger.info("worker %d stops: no viewers for %g s", worker.index, IDLE_STOP)
                    await worker.stop()

    def describe(self) -> list[dict[str, Any]]:
        """Each worker that ever started (on demand, those that have not stay out of /healthz)."""
        return [w.describe() for w in self.workers if w.starts]

    async def stop(self) -> None:
        self.stopping = True
        for task in (self._growing, self._idle_task):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(w.stop() for w in self.workers))
        self._frames.clear()


class WorkerPeers:
    """The peer factory (camtrack.outputs.webrtc.contract.PeerFactory) of a server with worker
    processes: a viewer's peer is made in a worker when the pool places it there (and the camera
    sends packets), else by `local` in this process."""

    def __init__(self, pool: WorkerPool, local: PeerFactory) -> None:
        self.pool = pool
        self.local = local

    def __call__(self, camera: CameraView, transport: Transport, remote: str,
                 on_end: Callable[[str], None]) -> PeerSession:
        if camera.packets() is not None:  # (else each viewer encodes its own, here)
            remote_peer, worker = self.pool.place()
            if remote_peer:
                return RemotePeer(worker, camera, transport, remote, on_end)
        return self.local(camera, transport, remote, on_end)
