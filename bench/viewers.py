"""A benchmark client process: N aiortc viewers of one camtrack server, measured in a time window.

`--decode` viewers decode every frame and read the latency stamp the moment each frame is
decoded; the others count whole received frames without decoding them (so one machine
can hold many viewers). `--light` viewers go further: once their answer is applied, RTP no
longer reaches their aiortc receiver at all (no SRTP, no jitter buffer); they count pictures by
the marker bit of the RTP header, which SRTP leaves in the clear, and the gaps between them.
STUN, DTLS and RTCP still go to aiortc, so the server sees a normal viewer (its consent checks
and receiver reports). Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

import aiortc.rtcrtpreceiver
import av
import cv2
from aiortc.codecs import get_decoder

from camtrack.client import Viewer
from camtrack.media import stamp
from camtrack.outputs.webrtc.ice import restrict_host_addresses


class Stamp:
    """A frame's latency, held in `frame.opaque`. PyAV keeps an opaque value by the Python
    object's identity, so a bare int is shared by every frame carrying the same small integer, and
    freeing one of them drops the other's: each frame gets an object of its own."""

    __slots__ = ("latency",)

    def __init__(self, latency: int) -> None:
        self.latency = latency


def latency_of(frame) -> int | None:
    """The latency a StampingDecoder read from this frame's stamp, if any."""
    return frame.opaque.latency if isinstance(frame.opaque, Stamp) else None


class StampingDecoder:
    """Decodes, then reads each frame's latency stamp at once (on the decoder thread)."""

    def __init__(self, inner, source_width: int | None = None) -> None:
        self.inner = inner
        #: the camera's own width: a smaller picture (a quality tier's, docs/quality.md) is scaled
        #: back to it before its stamp is read (the stamp's cells were drawn at that width)
        self.source_width = source_width

    def decode(self, encoded_frame):
        frames = self.inner.decode(encoded_frame)
        at = stamp.now_ms()
        for frame in frames:
            luma = frame.to_ndarray(format="gray")
            if self.source_width and luma.shape[1] < self.source_width:
                height = round(luma.shape[0] * self.source_width / luma.shape[1])
                luma = cv2.resize(luma, (self.source_width, height), interpolation=cv2.INTER_NEAREST)
            frame.opaque = Stamp(stamp.latency_ms(stamp.read_stamp(luma), at))
        return frames


class CountingDecoder:
    """Does not decode: one tiny placeholder frame per received frame."""

    def __init__(self, codec) -> None:
        pass

    def decode(self, encoded_frame):
        frame = av.VideoFrame(16, 16, "yuv420p")
        frame.pts = encoded_frame.timestamp
        return [frame]


class MarkerCounter:
    """Counts one viewer's pictures from the RTP marker bit, straight off its ICE socket."""

    def __init__(self, viewer: Viewer, result: dict, start: float, end: float) -> None:
        self.result, self.start, self.end = result, start, end
        self.viewer = viewer
        self.loop = asyncio.get_running_loop()
        self.first = self.loop.create_future()
        self.last: float | None = None
        self.gaps: list[float] = []
        assert viewer.pc is not None
        for transceiver in viewer.pc.getTransceivers():
            connection = transceiver.receiver.transport.transport.iceGatherer._connection
            for protocol in connection._protocols:
                protocol.datagram_received = self._wrap(protocol.datagram_received)

    def _wrap(self, deliver):
        def datagram_received(data: bytes, addr) -> None:
            # RTP (RFC 7983: first byte 128-191), not RTCP (payload types 200-206 with the marker bit)
            if len(data) > 12 and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223:
                if data[1] & 0x80:
                    self._picture()
                return
            deliver(data, addr)
        return datagram_received

    def _picture(self) -> None:
        now = self.loop.time()
        if not self.first.done():
            self.first.set_result(now)
        if self.start <= now < self.end:
            self.result["frames"] += 1
            if self.last is not None:
                self.gaps.append((now - self.last) * 1000)
        self.last = now


async def watch_light(viewer: Viewer, start: float, end: float, result: dict) -> None:
    counter = MarkerCounter(viewer, result, start, end)
    first = await counter.first
    result["first_frame"] = first - viewer.opened_at
    result["first_frame_since_join"] = first - result["joined"]
    await asyncio.sleep(max(0.0, end - asyncio.get_running_loop().time()))
    # the longest wait between two pictures: a stall shows here even when the count is right
    result["gap_max_ms"] = max(counter.gaps, default=None)


async def watch(viewer: Viewer, start: float, end: float, result: dict) -> None:
    loop = asyncio.get_running_loop()
    track = await viewer.track
    while True:
        frame = await track.recv()
        now = loop.time()
        if "first_frame" not in result:
            result["first_frame"] = now - viewer.opened_at
            if latency_of(frame) is not None:
                result["first_age"] = latency_of(frame)  # how old the first picture was: live, or replayed?
            result["first_frame_since_join"] = now - result["joined"]
        if now >= end:
            return
        if now >= start:
            result["frames"] += 1
            latency = latency_of(frame)
            if latency is not None:
                result["latency"].append(latency)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--decode", action="store_true")
    parser.add_argument("--stamp-width", type=int, default=0,
                        help="the camera's width, when pictures may come smaller (a quality tier)")
    parser.add_argument("--light", action="store_true", help="count pictures by the RTP marker bit, no aiortc receiver")
    parser.add_argument("--start-at", type=float, required=True, help="time.time() the window opens")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--join-spread", type=float, default=0.0,
                        help="each viewer joins after a random 0..S s (at random points of a camera's GOP)")
    parser.add_argument("--join-at", type=float, default=None,
                        help="time.time() at which all viewers join at once (default: at once)")
    parser.add_argument("--stagger", type=float, default=0.0, help="seconds between one viewer's join and the next")
    parser.add_argument("--data", action="store_true",
                        help="open a data channel (the processing results: their count in the window as data)")
    args = parser.parse_args()

    restrict_host_addresses(["127.0.0.1"])
    if args.decode:
        aiortc.rtcrtpreceiver.get_decoder = lambda codec: StampingDecoder(get_decoder(codec), args.stamp_width or None)
    else:
        aiortc.rtcrtpreceiver.get_decoder = CountingDecoder

    loop = asyncio.get_running_loop()
    start = loop.time() + (args.start_at - time.time())
    end = start + args.duration
    start_wall, end_wall = args.start_at, args.start_at + args.duration
    viewers = [Viewer(args.url, data=args.data) for _ in range(args.count)]
    results = [{"frames": 0, "latency": []} for _ in viewers]

    join = loop.time() + (args.join_at - time.time()) if args.join_at is not None else loop.time()

    async def run(index: int, viewer: Viewer, result: dict) -> None:
        await asyncio.sleep(max(0.0, join + index * args.stagger - loop.time()) + random.uniform(0, args.join_spread))
        result["joined"] = loop.time()
        try:
            await viewer.connect(timeout=60)
            watching = watch_light if args.light and not args.decode else watch
            await asyncio.wait_for(watching(viewer, start, end, result), end - loop.time() + 30)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            result["error"] = f"{type(exc).__name__}: {exc}"
            result["error_after"] = loop.time() - result["joined"]

    async def cpu_window() -> tuple[float, float]:
        await asyncio.sleep(max(0.0, start - loop.time()))
        before = time.process_time()
        await asyncio.sleep(max(0.0, end - loop.time()))
        return before, time.process_time()

    window = asyncio.ensure_future(cpu_window())
    await asyncio.gather(*(run(i, v, r) for i, (v, r) in enumerate(zip(viewers, results, strict=True))))
    for viewer, result in zip(viewers, results, strict=True):
        result.pop("joined", None)
        if args.data:  # results received (their messages are stamped with the frame's capture time)
            result["data"] = sum(m["type"] == "data" and start_wall <= m["time"] < end_wall for m in viewer.messages)
    before, after = await window
    print(json.dumps({"viewers": results, "cpu_seconds": after - before, "duration": args.duration}))
    await asyncio.gather(*(v.close() for v in viewers), return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
