"""A worker process: `python -m camtrack.workers.process FD`, started by the main process
(camtrack.workers.pool) with its end of a socket pair as FD.

It makes the peers of the viewers it is given (the same `Peer` as in the main process), with tracks
that read each camera's packets as the main process relays them (`RelayedFeed`). With a shared
WebRTC port it sends from a copy of the main process's socket, and the main process hands it the
datagrams for its peers (see UdpMux.adopt); with `--webrtc-port 0`, a random port per peer. It
exits when the main process says so, or goes away (its socket closes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from aiortc.sdp import candidate_from_sdp
from av import AudioFrame

from ..config import CameraConfig, Config
from ..media import quality
from ..media.feeds import PacketFeed, Transport
from ..media.load import LoadMonitor
from ..media.meters import Meter
from ..media.packet import MediaKind
from ..media.passthrough import RING_PACKETS
from ..media.quality import TierReader
from ..media.reader import PacketReader
from ..media.tiers import Tier
from ..outputs.webrtc.fanout import fanout_totals
from ..outputs.webrtc.ice import IceContext, restrict_host_addresses
from ..outputs.webrtc.peer import OfferError, Peer, PeerTimeouts
from ..outputs.webrtc.tracks import EncodedTrack
from ..outputs.webrtc.udpmux import UdpMux
from ..seams import check_hooks
from . import wire
from .relay import RelayedFeed, RelayedResults

logger = logging.getLogger(__name__)

#: seconds between the counters this worker sends the main process (/metrics, /healthz)
STATS_INTERVAL = 1.0
#: seconds the peers get to close when the worker is told to exit
EXIT_GRACE = 1.0


@dataclasses.dataclass
class RelayedCamera:
    """A camera as a worker's peers see it (a camtrack.outputs.webrtc.contract.PeerCamera): its
    settings and meters; the pictures come relayed, and the load is measured by the main process."""

    settings: CameraConfig
    meters: dict[Transport, Meter] = dataclasses.field(default_factory=lambda: {t: Meter() for t in Transport})
    load: LoadMonitor | None = None

    @property
    def name(self) -> str:
        return self.settings.name


class Worker:
    """The worker's side of the socket: the peers it made and the feeds it relays to them."""

    def __init__(self, writer: asyncio.StreamWriter, config: Config, ice: IceContext) -> None:
        self.writer = writer
        self.config = config
        self.ice = ice
        self.cameras = {c.name: RelayedCamera(c) for c in config.cameras}
        self.timeouts = PeerTimeouts.of(config)
        #: the feeds relayed here, by their wire name (wire.FeedKey)
        self.feeds: dict[str, RelayedFeed] = {}
        #: the processing results relayed here, by camera
        self.results: dict[str, RelayedResults] = {}
        self.peers: dict[int, Peer] = {}
        #: the feeds each peer's tier reader reads (one, two while it moves between tiers), by wire
        #: name: what the main process relays here for it (docs/quality.md)
        self.reading: dict[int, set[str]] = {}
        self.closing: set[asyncio.Task[None]] = set()

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(wire.control(message))

    async def serve(self, reader: asyncio.StreamReader) -> None:
        """Handle the main process's messages until it says exit or goes away."""
        stats = asyncio.ensure_future(self._stats())
        try:
            while True:
                try:
                    message = await wire.read(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    logger.info("the main process is gone: exiting")
                    return
                except wire.BadMessage as exc:  # (skipped whole: the next message is read as usual)
                    logger.warning("a message from the main process skipped: %s", exc)
                    continue
                if isinstance(message, wire.WireDatagram):
                    if self.ice.mux is not None:
                        self.ice.mux.datagram_received(message.data, message.addr)
                    continue
                if isinstance(message, wire.WirePacket):
                    feed = self.feeds.get(message.feed)
                    if feed is not None:
                        feed.add(message)
                        # (a read of buffered data does not yield: let the tracks take each packet as it
                        # comes, rather than a burst of them after this worker was not scheduled)
                        await asyncio.sleep(0)
                    continue
                kind = message["t"]
                if kind == "exit":
                    return
                if kind == "offer":
                    self._offer(message)
                elif kind == "candidate":
                    asyncio.ensure_future(self._candidate(message))
                elif kind == "close":
                    self._close(message["id"])
                elif kind == "feed":
                    self._feed(message)
                elif kind == "results":  # (before the first offer of a camera with a processing function)
                    relay = self._relayed_results(message["camera"])
                    relay.result = None  # (a new relay: what an earlier one left is old)
                    if relay.readers:  # (a new relay starts reading only when told)
                        self.send({"t": "result_readers", "camera": relay.camera, "reading": True})
                elif kind == "result":
                    relayed = self.results.get(message["camera"])
                    if relayed is not None:
                        relayed.add(message["frame"], message["time"], message["text"])
                elif kind == "result_status":
                    relayed = self.results.get(message["camera"])
                    if relayed is not None:
                        relayed.status(message["describe"], message["calls"], message["seconds"])
                elif kind == "unfeed":
                    # (unless a viewer here wants it again already: its wish is on its way, and the
                    # main process relays it again)
                    if not any(message["feed"] in names for names in self.reading.values()):
                        feed = self.feeds.pop(message["feed"], None)
                        if feed is not None:
                            feed.close()
                elif kind == "hear":
                    self._hear(message["id"], bool(message["on"]))
                elif kind == "quality":
                    peer = self.peers.get(message["id"])
                    if peer is not None:
                        try:
                            peer.choose_quality(message["choice"])
                        except ValueError as exc:  # (the main process checked it against the camera's tiers)
                            logger.info("viewer %s: %s", peer.remote, exc)
        finally:
            stats.cancel()
            await self.close_all()

    def _relayed_results(self, camera: str) -> RelayedResults:
        """The results relayed here of `camera`, which tell the main process when a viewer here
        reads them (and when none does any more)."""
        relayed = self.results.get(camera)
        if relayed is None:
            relayed = self.results[camera] = RelayedResults(
                camera, lambda reading: self.send({"t": "result_readers", "camera": camera, "reading": reading}))
        return relayed

    def _feed(self, message: dict[str, Any]) -> None:
        name = message["feed"]
        feed = self.feeds.get(name)
        if feed is None:
            self.feeds[name] = RelayedFeed(name, message["codec"], message["kind"], message["ring"],
                                           lambda: self.send({"t": "keyframe", "feed": name}))
        else:
            feed.restart(message["codec"], message["kind"])

    def _offer(self, message: dict[str, Any]) -> None:
        """Make the peer now (a close that follows finds it), and answer in a task of its own (ICE
        gathering takes a while: the next messages must not wait for it)."""
        peer_id: int = message["id"]
        camera = self.cameras[message["camera"]]
        feed = self.feeds.get(message["feed"])  # (the camera's own packets, or a tier's)
        if feed is None:
            self.send({"t": "answer", "id": peer_id, "error": "the camera is not relayed to this worker"})
            return
        transport = Transport(message["transport"])
        first = wire.FeedKey.parse(message["feed"])
        self.reading[peer_id] = {first.wire}
        qualities: tuple[str, ...] = tuple(message.get("qualities", ("main",)))
        choice: str = message.get("quality", "auto")

        def track(_codec: str) -> EncodedTrack:
            # a reader of the camera's tiers as relayed here, starting on the one the main process
            # relays for this offer (its codec; the low tier when the viewer asked for it first)
            meter = camera.meters[transport]
            reader = TierReader(PacketReader(feed, meter), first.tier, self._packets_for(peer_id, first.camera),
                                qualities, meter, choice=choice, reason="asked" if choice != "auto" else "start",
                                camera=first.camera)
            return EncodedTrack(feed, reader=reader)

        # (the relayed feed's codec: the main process chose it from the offer, and relays that feed)
        sound = self.feeds.get(message.get("audio") or "")  # (the camera's sound, when the offer asks)

        async def sound_track(_offer: object) -> EncodedTrack | None:
            # (the relayed feed of the codec the main process chose from the offer: Opus or the
            # camera's own G.711)
            return None if sound is None else EncodedTrack(sound)
        peer = Peer(camera, self.timeouts, transport, message["remote"],
                    lambda reason: self.send({"t": "ended", "id": peer_id, "reason": reason}), self.ice,
                    track, (feed.codec.codec,), self.results.get(camera.name),
                    audio=None if sound is None else sound_track)
        peer.on_state(lambda: self.send({"t": "state", "id": peer_id, "state": peer.state}))
        peer.on_quality(lambda: self._quality_changed(peer_id, peer))
        self.peers[peer_id] = peer
        asyncio.ensure_future(self._answer(peer_id, peer, message))

    def _hear(self, peer_id: int, on: bool) -> None:
        """Relay what a peer's viewer says to the main process (its Talk there: one talker per camera
        across every process), or stop: each decoded frame as it comes, none queued here."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return
        if not on:
            peer.on_heard = None
            return

        def heard(frame: AudioFrame) -> None:
            self.send({"t": "heard", "id": peer_id, **wire.sound(frame)})

        peer.on_heard = heard

    def _packets_for(self, peer_id: int, camera: str) -> Callable[[MediaKind, Tier], PacketFeed | None]:
        """What a peer's TierReader reads a tier of its camera from: the relayed feed of that tier,
        made here at once (its packets come once the main process relays it: it is told now)."""

        def packets(kind: MediaKind, tier: Tier) -> PacketFeed | None:
            if peer_id not in self.reading:  # (closed)
                return None
            key = wire.FeedKey(camera, kind, tier)
            feed = self.feeds.get(key.wire)
            if feed is None:
                model = next((f for f in self.feeds.values()  # (of its camera and kind: a codec to start with)
                              if (k := wire.FeedKey.parse(f.name)).camera == camera and k.kind == kind), None)
                if model is None:
                    return None
                # (its codec and kind come with the main process's "feed", before its first packet)
                feed = self.feeds[key.wire] = RelayedFeed(key.wire, model.codec, "encoder", RING_PACKETS,
                                                          lambda: self.send({"t": "keyframe", "feed": key.wire}))
            reading = self.reading.setdefault(peer_id, set())
            if key.wire not in reading:
                reading.add(key.wire)
                self.send({"t": "reading", "id": peer_id, "feeds": sorted(reading)})
            return feed

        return packets

    def _quality_changed(self, peer_id: int, peer: Peer) -> None:
        """A peer's tier changed (or its choice): the main process hears of it, and stops relaying
        the tier it left when no one else here reads it."""
        reader = peer.tier_reader
        reading = self.reading.get(peer_id)
        if reader is not None and reading is not None and reader.moving_to is None and not reader.closed:
            now = {getattr(reader.feed, "name", "")} & reading
            if now and now != reading:
                self.reading[peer_id] = now
                self.send({"t": "reading", "id": peer_id, "feeds": sorted(now)})
        self.send({"t": "quality", "id": peer_id, "quality": peer.quality()})

    async def _answer(self, peer_id: int, peer: Peer, message: dict[str, Any]) -> None:
        try:
            answer = await peer.answer(message["sdp"])
        except OfferError as exc:
            self.send({"t": "answer", "id": peer_id, "error": str(exc), "offer_error": True})
            self._close(peer_id)
            return
        except Exception as exc:  # noqa: BLE001 - said to the main process, which ends the session
            logger.exception("answering viewer %s", message["remote"])
            self.send({"t": "answer", "id": peer_id, "error": f"failed to answer: {type(exc).__name__}"})
            self._close(peer_id)
            return
        if peer_id not in self.peers:
            return  # closed while answering
        self.send({"t": "answer", "id": peer_id, "sdp": answer, "quality": peer.quality(), "hears": peer.hears})

    async def _candidate(self, message: dict[str, Any]) -> None:
        peer = self.peers.get(message["id"])
        if peer is None:
            return
        try:
            if message["candidate"] is None:
                await peer.add_candidate(None)
            else:
                candidate = candidate_from_sdp(message["candidate"])
                candidate.sdpMid, candidate.sdpMLineIndex = message["sdpMid"], message["sdpMLineIndex"]
                await peer.add_candidate(candidate)
        except Exception as exc:  # noqa: BLE001 - the main process checked its form; a late one is harmless
            logger.debug("candidate refused: %s", exc)

    def _close(self, peer_id: int) -> None:
        self.reading.pop(peer_id, None)
        peer = self.peers.pop(peer_id, None)
        if peer is None:
            self.send({"t": "closed", "id": peer_id})
            return

        async def close() -> None:
            await peer.close()
            self.send({"t": "closed", "id": peer_id})

        task = asyncio.ensure_future(close())
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    async def close_all(self) -> None:
        for peer_id in list(self.peers):
            self._close(peer_id)
        for feed in self.feeds.values():
            feed.close()
        if self.closing:
            await asyncio.wait(list(self.closing), timeout=EXIT_GRACE)

    async def _stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            self.send(self.stats())

    def received(self) -> dict[str, int]:
        """Packets received per camera (over its feeds)."""
        counts: dict[str, int] = {}
        for name, feed in self.feeds.items():
            camera = wire.FeedKey.parse(name).camera
            counts[camera] = counts.get(camera, 0) + feed.received
        return counts

    @staticmethod
    def tiers() -> dict[str, int]:
        """Its viewers on each quality tier now, by `camera/quality`."""
        counts: dict[str, int] = {}
        for reader in list(quality.READERS):
            if not reader.closed:
                name = f"{reader.camera}/{reader.quality}"
                counts[name] = counts.get(name, 0) + 1
        return counts

    def stats(self) -> dict[str, Any]:
        """Totals since the worker started (the main process takes the differences): its meters,
        each camera's capture-to-wire histogram, and what its fan-outs' sends cost."""
        sends = fanout_totals()
        return {"t": "stats", "peers": len(self.peers), "at": time.monotonic(),
                "received": self.received(),
                "meters": {name: {str(t): (m.frames, m.bytes, m.negotiation_failures) for t, m in camera.meters.items()}
                           for name, camera in self.cameras.items()},
                "wire": {name: {str(t): (list(m.wire_age.counts), m.wire_age.total) for t, m in camera.meters.items()
                                if m.wire_age.count}
                         for name, camera in self.cameras.items()},
                "sends": (sends.pictures, sends.sends, sends.seconds),
                # its viewers on each quality tier now, and their moves since it started (docs/quality.md)
                "tiers": self.tiers(), "moves": [(*key, count) for key, count in quality.MOVES.items()],
                # what its mux made of the datagrams handed over (routed, stray STUN)
                "mux": dataclasses.asdict(self.ice.mux.stats) if self.ice.mux is not None else {}}


async def run(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    init = await wire.read(reader)
    assert isinstance(init, dict) and init["t"] == "init"
    config: Config = init["config"]
    index: int = init["index"]
    levels: dict[str, int] = init["log_levels"]
    logging.basicConfig(level=levels["camtrack"],
                        format=f"%(asctime)s worker {index} %(levelname)s %(name)s: %(message)s")
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    check_hooks()
    undo: list[Callable[[], None]] = []
    addresses: list[str] = init["addresses"]
    if addresses:
        undo.append(restrict_host_addresses(addresses))
    ice = IceContext(config.ice_servers, config.turn_secret)
    mux_fd: int | None = init["mux_fd"]
    if mux_fd is not None:
        # the main process's shared socket: sent on from here, read there (see UdpMux.adopt)
        shared = socket.socket(fileno=mux_fd)
        mux = UdpMux(shared.getsockname()[1], config.public_addresses, addresses[0] if len(addresses) == 1 else None)
        mux.adopt(shared)

        def tell(message: dict[str, Any]) -> None:
            if not writer.is_closing():
                writer.write(wire.control(message))

        # (with the password: the main process checks each request for the ufrag before handing it over)
        mux.on_ufrag = lambda ufrag, password: tell({"t": "ufrag", "ufrag": ufrag, "password": password}
                                                    if password is not None else {"t": "unufrag", "ufrag": ufrag})
        mux.on_route = lambda ufrag, remote: tell({"t": "route", "ufrag": ufrag, "remote": remote})
        # (each request of its peers: the main process hands over a response to it from anywhere, and
        # no other response from an address they did not prove)
        mux.on_transaction = lambda ufrag, transaction: tell({"t": "transaction", "ufrag": ufrag, "id": transaction})
        ice.mux = mux
    writer.write(wire.control({"t": "ready", "pid": os.getpid(), "port": ice.mux.port if ice.mux else 0}))
    worker = Worker(writer, config, ice)
    loop = asyncio.get_running_loop()
    # SIGTERM to the whole group (systemd, docker stop): hang up and go, as when the main process says so
    stopping = asyncio.ensure_future(worker.serve(reader))
    loop.add_signal_handler(signal.SIGTERM, stopping.cancel)
    started = time.monotonic()
    try:
        await stopping
    except asyncio.CancelledError:
        await worker.close_all()
    finally:
        if ice.mux is not None:
            ice.mux.close()
        for step in undo:
            step()
        writer.close()
    logger.debug("worker %d exits after %.0f s", index, time.monotonic() - started)


def main() -> None:
    # Ctrl-C reaches the whole process group: the main process says when to go
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(run(int(sys.argv[1])))


if __name__ == "__main__":
    main()
