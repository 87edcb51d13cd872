"""A worker's copy of one camera's packet feed: the packets the main process relays, in a ring of
their own, read by the worker's tracks as they would read the shared encoder (a `PacketFeed`); and
of a camera's processing results (`RelayedResults`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av

from ..media.encoder import KEYFRAME_ANSWERS
from ..media.feeds import FeedClosed
from ..media.packet import CodecInfo, EncodedPacket
from ..media.ring import Read, Ring
from ..processing.contract import Result
from .wire import WirePacket

#: a start run from a keyframe younger than this (since it arrived here) is as good as a fresh one:
#: the shared encoder takes a keyframe under KEYFRAME_ANSWERS old (since it was made, so older
#: than here) as the answer to a request and forces none. With a shorter time here, a newcomer
#: arriving 0.1-0.25 s after a keyframe refused the run, asked in vain, and waited for the next
#: periodic keyframe (up to --keyframe-interval: a WHEP viewer got nothing for 20 s in
#: tests/test_workers.py on a loaded machine)
FRESH_KEYFRAME = KEYFRAME_ANSWERS
#: a worker asks the main process for a keyframe at most this often per camera: requests are sticky
#: there until a keyframe comes, so one in flight stands for the others
KEYFRAME_REQUEST_INTERVAL = 0.05


class RelayClosed(FeedClosed):
    """The main process stopped relaying the camera (no viewer of it left here, or it closed)."""


class RelayedFeed:
    """The packets of one feed of a camera (named `name`: its FeedKey's `wire`) from the main process.

    `kind` is how they are made there: "encoder" (a shared encoder, which makes a keyframe when
    asked) or "passthrough" (a camera's own, whose keyframes cannot be asked for: a newcomer starts
    from the newest one the ring holds, as with the passthrough feed itself).
    """

    def __init__(self, name: str, codec: CodecInfo, kind: str, ring_size: int,
                 ask_keyframe: Callable[[], None]) -> None:
        self.name = name
        self.kind = kind
        self.consumers: set[object] = set()
        self.received = 0
        self._codec = codec
        self._ask = ask_keyframe
        self._asked = 0.0
        self._keyframe_at = 0.0
        self._ring: Ring[EncodedPacket] = Ring(ring_size, lambda: RelayClosed(name))
        self._ring.reopen()

    @property
    def codec(self) -> CodecInfo:
        return self._codec

    @property
    def makes_keyframes(self) -> bool:
        """As the feed it relays: asked for, the main process's encoder makes one."""
        return self.kind == "encoder"

    @property
    def latest(self) -> EncodedPacket | None:
        return self._ring.newest

    @property
    def open(self) -> bool:
        return self._ring.open

    def attach(self, reader: object) -> None:
        self.consumers.add(reader)

    def detach(self, reader: object) -> None:
        self.consumers.discard(reader)

    def start_packets(self) -> list[EncodedPacket]:
        run = self._ring.since(lambda p: p.keyframe)
        if self.kind == "passthrough" or (run and time.monotonic() - self._keyframe_at < FRESH_KEYFRAME):
            return run
        self.request_keyframe()
        return []

    def request_keyframe(self) -> None:
        now = time.monotonic()
        if self.kind == "encoder" and now - self._asked >= KEYFRAME_REQUEST_INTERVAL:
            self._asked = now
            self._ask()

    async def next_packet(self, after: int = 0) -> Read[EncodedPacket]:
        return await self._ring.next(after)

    def restart(self, codec: CodecInfo, kind: str) -> None:
        """The main process (re)starts relaying, perhaps with new codec settings."""
        self._codec, self.kind = codec, kind
        if not self._ring.open:
            self._ring.reopen()

    def add(self, wire: WirePacket) -> None:
        """A packet from the main process: gaps in its numbers are what this worker missed, and
        readers see them as skipped packets (and resync on a keyframe)."""
        newest = self._ring.newest
        if newest is not None and wire.seq <= newest.seq:
            self._ring.reopen()  # a new run of the main feed, numbered from lower: start over
        packet: av.Packet[Any] = av.Packet(wire.data)
        packet.pts = packet.dts = wire.pts
        packet.time_base = self._codec.time_base
        self.received += 1
        if wire.keyframe:
            self._keyframe_at = time.monotonic()
        self._ring.publish(EncodedPacket(wire.seq, packet, wire.keyframe, wire.captured, len(wire.data), self._codec))

    def close(self) -> None:
        """No more packets: readers waiting get RelayClosed."""
        self._ring.close()


@dataclass
class RelayedCounts:
    """The main process's processing counters, as last relayed."""

    calls: int = 0
    seconds: float = 0.0


class RelayedResults:
    """A camera's processing results as the main process relays them to this worker (a
    camtrack.outputs.results.ResultFeed): its newest result, and its status (what `describe()` and
    the counters say there). The main process relays them while this worker has viewers of the
    camera; `reading(bool)` tells it when the first reader here (a viewer's open data channel)
    attaches and the last detaches: only then does the relay keep the camera's processing running
    (a passed-through camera's decoder and function run for nobody otherwise)."""

    def __init__(self, camera: str, reading: Callable[[bool], None] | None = None) -> None:
        self.camera = camera
        self.reading = reading
        self.readers: set[object] = set()
        self.result: Result | None = None
        self.stats = RelayedCounts()
        self._described: dict[str, object] = {"state": "idle"}
        self._new = asyncio.Event()

    def add(self, frame: int, captured: float, text: str) -> None:
        """A result the main process relayed: its data's JSON text (what the viewers are sent; the
        data itself is not parsed here)."""
        if self.result is None or frame > self.result.frame:
            self.result = Result(frame, captured, None, text)
            woken, self._new = self._new, asyncio.Event()
            woken.set()

    def status(self, described: dict[str, object], calls: int, seconds: float) -> None:
        """The processing's status as the main process relayed it."""
        self._described = described
        self.stats = RelayedCounts(calls, seconds)

    def describe(self) -> dict[str, object]:
        return dict(self._described)

    def result_age(self, now: float | None = None) -> float | None:
        result = self.result
        return None if result is None else max(0.0, (time.time() if now is None else now) - result.time)

    async def next_result(self, after: int = 0) -> Result:
        while True:
            result = self.result
            if result is not None and result.frame > after:
                return result
            await self._new.wait()

    def attach(self, reader: object) -> None:
        """`reader` reads the results (a viewer's data channel): the first tells the main process."""
        first = not self.readers
        self.readers.add(reader)
        if first and self.reading is not None:
            self.reading(True)

    def detach(self, reader: object) -> None:
        if reader in self.readers:
            self.readers.discard(reader)
            if not self.readers and self.reading is not None:
                self.reading(False)
