"""The fan-out: one task per packet feed (and codec) that sends each picture to every WebRTC viewer
in step with the feed, instead of one task per viewer waking up for it.

A viewer's own RTP loop (rtpsend.send_rtp_once) reads its start, its join bridge and any resync
itself. Once its reader is in step (the next packet it needs is just the feed's next one) and has
caught up with the feed's newest packet, the loop hands its `RtpStream` to the feed's fan-out and
waits. For each new packet the fan-out packetizes it once (or finds it packetized) and calls every
member's `RtpStream.send` in one pass: per viewer and picture only the header, SRTP and the
sends are left, with no future, task switch or reader call in between. Anything out of the
ordinary hands the viewer back to its own loop: the fan-out fell behind the feed (its members
resync on their own), the viewer's reader stopped being in step, the feed closed. A viewer whose
connection is gone leaves with ConnectionError, as its own loop would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from aiortc.codecs import get_encoder
from aiortc.codecs.base import Encoder
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from ...media.feeds import FeedClosed, PacketFeed
from ...media.packet import EncodedPacket
from ...media.packetreader import Reading
from .rtpsend import RtpFrame, RtpStream

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Member:
    """One viewer the fan-out sends to."""

    reader: Reading
    stream: RtpStream
    #: `(captured, seconds, handed)` once a picture went to its socket (its meter, the load monitor)
    on_sent: Callable[[float, float, float], None] | None
    #: done when the fan-out hands the viewer back (an exception: the viewer is gone)
    back: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class FanoutStats:
    #: pictures sent, and viewer-pictures (one picture to one viewer)
    pictures: int = 0
    sends: int = 0
    #: CPU seconds the passes took (the loop thread's)
    seconds: float = 0.0
    #: viewers handed back to their own loops, by why
    handed_back: dict[str, int] = field(default_factory=dict)


class RtpFanout:
    """Sends a packet feed's pictures, packetized for one codec, to every member in one pass."""

    def __init__(self, feed: PacketFeed) -> None:
        self.feed = feed
        self.stats = FanoutStats()
        self._members: list[Member] = []
        self._task: asyncio.Task[None] | None = None
        #: the last packet handled
        self._after = 0

    @property
    def members(self) -> int:
        return len(self._members)

    async def serve(self, member: Member) -> None:
        """Send `member`'s pictures until it is handed back (returns) or gone (raises)."""
        self._members.append(member)
        if self._task is None or self._task.done():
            self._after = member.reader.seq
            self._task = asyncio.ensure_future(self._run())
        try:
            await member.back
        finally:
            with contextlib.suppress(ValueError):
                self._members.remove(member)

    def _hand_back(self, member: Member, why: str, error: BaseException | None = None) -> None:
        with contextlib.suppress(ValueError):
            self._members.remove(member)
        if not member.back.done():
            if error is None:
                member.back.set_result(None)
            else:
                member.back.set_exception(error)
        self.stats.handed_back[why] = self.stats.handed_back.get(why, 0) + 1

    async def _run(self) -> None:
        feed = self.feed
        try:
            while self._members:
                try:
                    read = await feed.next_packet(self._after)
                except FeedClosed:
                    for member in list(self._members):
                        self._hand_back(member, "feed closed")  # its own loop hears it from its reader
                    return
                encoded = read.item
                after, self._after = self._after, encoded.seq
                if read.skipped:
                    # the fan-out itself fell behind (a stalled loop): every member misses what it
                    # skipped, and resyncs from its own reader
                    for member in list(self._members):
                        self._hand_back(member, "fell behind")
                    continue
                self._send(encoded, after)
        except Exception as exc:  # noqa: BLE001 - never leave members waiting on a dead task
            logger.exception("fan-out of %s failed", getattr(feed, "name", feed))
            for member in list(self._members):
                self._hand_back(member, "failed", MediaStreamError(str(exc)))

    def _send(self, encoded: EncodedPacket, after: int) -> None:
        """`encoded` to every member, the packet after number `after`. The pass's CPU time (the
        loop thread's: a quota's throttling or another thread's turn does not count), shared out
        over the viewers sent to, goes to each one's `on_sent` with when its packets were handed
        to the socket."""
        feed = self.feed
        shared: RtpFrame | None = None
        sent: list[tuple[Member, float]] = []
        began = time.thread_time()
        now = time.time
        for member in list(self._members):
            reader = member.reader
            seq = reader.seq
            if seq >= encoded.seq:
                continue  # joined having this one already
            if seq != after or not reader.in_step():
                self._hand_back(member, "closed" if reader.closed else "out of step",
                                MediaStreamError() if reader.closed else None)
                continue
            own_pts = reader.step(encoded)
            if own_pts is None:
                if shared is None:
                    shared = rtp_frame(feed, encoded, member.stream.codec, None)
                frame = shared
            else:
                frame = rtp_frame(feed, encoded, member.stream.codec, own_pts)
            try:
                if not member.stream.send(frame):
                    continue
            except ConnectionError as exc:
                self._hand_back(member, "disconnected", exc)
                continue
            member.stream.stats.fanned_out += 1
            sent.append((member, now()))
        self.stats.pictures += 1
        self.stats.sends += len(sent)
        if sent:
            took = time.thread_time() - began
            self.stats.seconds += took
            each = took / len(sent)
            for member, handed in sent:
                if member.on_sent is not None:
                    member.on_sent(encoded.captured, each, handed)


def rtp_frame(feed: PacketFeed, encoded: EncodedPacket, codec: RTCRtpCodecParameters,
              own_pts: int | None = None) -> RtpFrame:
    """`encoded` as RTP payloads in `codec` (packetized once for every viewer of `feed`: kept on
    the packet), its RTP timestamp on its media's clock (the packet's `CodecInfo.clock_rate`: 90 kHz
    for video, 48 kHz for Opus; from `own_pts` when the viewer has its own, else the packet's) and
    its capture time."""
    payloads = encoded.shared.get(codec.mimeType)
    if payloads is None:
        payloads = encoded.shared[codec.mimeType] = _packer(feed, codec).pack(encoded.packet)[0]
    pts = own_pts if own_pts is not None else encoded.packet.pts or 0
    return RtpFrame(payloads, encoded.codec.rtp_timestamp(pts), encoded.captured)


#: one aiortc packetizer per feed and codec, shared by its viewers: VP8's carries the picture
#: id, which must grow by one from picture to picture of a stream whoever packs it
_PACKERS: weakref.WeakKeyDictionary[PacketFeed, dict[str, Encoder]] = weakref.WeakKeyDictionary()


def _packer(feed: PacketFeed, codec: RTCRtpCodecParameters) -> Encoder:
    packers = _PACKERS.setdefault(feed, {})
    packer = packers.get(codec.mimeType)
    if packer is None:
        packer = packers[codec.mimeType] = get_encoder(codec)
    return packer


#: one fan-out per feed and codec (MIME type)
_FANOUTS: weakref.WeakKeyDictionary[PacketFeed, dict[str, RtpFanout]] = weakref.WeakKeyDictionary()


def fanout_totals() -> FanoutStats:
    """What every fan-out of this process did, summed (pictures, sends, CPU seconds)."""
    total = FanoutStats()
    for fanouts in list(_FANOUTS.values()):
        for fanout in fanouts.values():
            total.pictures += fanout.stats.pictures
            total.sends += fanout.stats.sends
            total.seconds += fanout.stats.seconds
    return total


def fanout_for(feed: PacketFeed, mime: str) -> RtpFanout:
    """The fan-out of `feed`'s pictures in codec `mime` (made at first use)."""
    fanouts = _FANOUTS.setdefault(feed, {})
    fanout = fanouts.get(mime)
    if fanout is None:
        fanout = fanouts[mime] = RtpFanout(feed)
    return fanout
