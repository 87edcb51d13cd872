"""camtrack's own RTP sender: each picture packetized once, sent to every viewer.

aiortc's sending loop packetizes every picture again for every viewer and awaits four coroutines
per packet; `send_rtp_once` puts camtrack's loop (an `RtpStream` per sender) in its place, and
keeps what aiortc's RTCP reads (the history NACKs are answered from, the sender report's counts
and times) as aiortc's loop would. It reaches aiortc and pylibsrtp through camtrack.seams.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aioice.ice import CandidatePair
from aiortc import RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import RTP_HISTORY_SIZE, HeaderExtensions, HeaderExtensionsMap, RtpPacket
from aiortc.utils import random32

from ...seams import aioice as aioice_seam
from ...seams import aiortc as aiortc_seam
from ...seams.aiortc import dtls_connected, record_sent, sending
from ...seams.pylibsrtp import SRTP_MAX_TRAILER, fast_protect
from ..results import SentPictures
from .udpmux import MuxTransport

__all__ = ["SRTP_MAX_TRAILER", "RtpFrame", "RtpSendStats", "RtpStream", "SentPictures", "fast_protect",
           "forget_sent", "send_rtp_once"]

logger = logging.getLogger(__name__)


# --- RTP: each picture packetized once, sent to every viewer --------------------------------------

@dataclass
class RtpFrame:
    """One picture (or audio frame) as RTP payloads (shared by every viewer: never modified), its
    RTP timestamp on its media's clock (the feed's `CodecInfo.clock_rate`, before the viewer's
    random origin), its capture time (seconds since the epoch) and
    the NTP time it is sent at (32.32; read once for every viewer of one pass: abs-send-time's
    unit is 3.8 us, and a pass over hundreds of viewers takes a few ms)."""

    payloads: Sequence[bytes]
    timestamp: int
    captured: float
    ntp: int = field(default_factory=lambda: _ntp_now())


_HEAD = struct.Struct("!BBH")
#: seconds from the NTP epoch (1900) to the Unix epoch
_NTP_UNIX = 2208988800


def _ntp_of(seconds: float) -> int:
    """`seconds` since the Unix epoch as NTP time, 32.32 fixed point."""
    return (int(seconds) + _NTP_UNIX) << 32 | int((seconds % 1.0) * 4294967296.0)


def _ntp_now() -> int:
    """The NTP time now, 32.32 fixed point: what aiortc's clock gives, without its datetimes
    (a few microseconds per call, paid per viewer and picture)."""
    now = time.time()
    return (int(now) + _NTP_UNIX) << 32 | int((now % 1.0) * 4294967296.0)


class _History:
    """What a sender sent lately, for NACKs: aiortc's `__rtp_history` keeps an RtpPacket per
    packet sent; this keeps, per sequence number, the picture it belonged to (one tuple shared by
    the picture's packets) and makes the RtpPacket only when one is asked for again."""

    def __init__(self, payload_type: int = 0, ssrc: int = 0) -> None:
        self.payload_type, self.ssrc = payload_type, ssrc
        #: by sequence number modulo RTP_HISTORY_SIZE: (first sequence number, timestamp,
        #: payloads, abs-send-time) of its picture (the RTP loop writes it directly)
        self.sent: list[tuple[int, int, Sequence[bytes], int] | None] = [None] * RTP_HISTORY_SIZE
        #: the MID header extension's value
        self.mid: str | None = None

    def get(self, key: int) -> RtpPacket | None:
        if not 0 <= key < RTP_HISTORY_SIZE:
            return None
        sent = self.sent[key]
        if sent is None:
            return None
        first, timestamp, payloads, abs_send_time = sent
        index = (key - first) % RTP_HISTORY_SIZE
        if index >= len(payloads):
            return None
        marker = 1 if index == len(payloads) - 1 else 0
        packet = RtpPacket(self.payload_type, marker, (first + index) & 0xFFFF, timestamp, self.ssrc, payloads[index])
        packet.extensions = HeaderExtensions(mid=self.mid, abs_send_time=abs_send_time)
        return packet

    def values(self) -> list[RtpPacket]:
        """Every packet held (as aiortc's dict has them)."""
        return [p for p in map(self.get, range(RTP_HISTORY_SIZE)) if p is not None]

    def forget(self) -> None:
        """Hold nothing sent so far: NACKs for it are answered with nothing (the list is the one the
        RTP loop writes to: cleared in place)."""
        self.sent[:] = [None] * RTP_HISTORY_SIZE


def forget_sent(sender: RTCRtpSender) -> None:
    """`sender` no longer retransmits what it sent so far (a viewer moved to another quality tier,
    docs/quality.md: the old tier's packets are of no use once the new tier's keyframe is on its way,
    and resending them behind a narrow link keeps the link full, its queue long and its loss high)."""
    history = aiortc_seam.rtp_history(sender)
    if isinstance(history, _History):
        history.forget()



class _HeaderTemplate:
    """One sender's RTP header with its extensions, serialized by aiortc once; per picture only
    the timestamp and the abs-send-time bytes are written into it (found by serializing twice
    with two different values), per packet the marker and sequence number."""

    def __init__(self, payload_type: int, ssrc: int, mid: str | None, extensions_map: HeaderExtensionsMap) -> None:
        self.payload_type, self.ssrc, self.mid, self.map = payload_type, ssrc, mid, extensions_map

        def serialized(abs_send_time: int) -> bytes:
            packet = RtpPacket(payload_type, 0, 0, 0, ssrc)
            packet.extensions.mid = mid
            packet.extensions.abs_send_time = abs_send_time
            return packet.serialize(extensions_map)

        one, other = serialized(0), serialized(0xFFFFFF)
        self.bytes = bytearray(one)
        changed = [i for i, (a, b) in enumerate(zip(one, other, strict=False)) if a != b]
        #: where abs-send-time's 3 bytes are; None when not negotiated; -1: unexpected layout
        self.offset: int | None = None
        if len(one) != len(other) or (changed and changed != list(range(changed[0], changed[0] + 3))):
            self.offset = -1
        elif changed:
            self.offset = changed[0]

    def header(self, timestamp: int, abs_send_time: int) -> tuple[int, bytes]:
        """The first byte and the bytes after the sequence number, for one picture."""
        if self.offset == -1:  # not the layout this knows: let aiortc serialize every picture
            packet = RtpPacket(self.payload_type, 0, 0, timestamp, self.ssrc)
            packet.extensions.mid = self.mid
            packet.extensions.abs_send_time = abs_send_time
            serialized = packet.serialize(self.map)
            return serialized[0], serialized[4:]
        head = self.bytes
        head[4:8] = timestamp.to_bytes(4, "big")
        if self.offset is not None:
            head[self.offset:self.offset + 3] = abs_send_time.to_bytes(3, "big")
        return head[0], bytes(head[4:])


@dataclass
class RtpSendStats:
    """What one sender's RTP did (camtrack's, see `send_rtp_once`)."""

    frames: int = 0
    packets: int = 0
    #: pictures it was handed by its feed's fan-out (camtrack.outputs.webrtc.fanout), not its own loop
    fanned_out: int = 0
    #: packets the socket would not take at once (its buffer full): dropped, as the network would
    dropped: int = 0


class RtpStream:
    """One sender's RTP as camtrack sends it: its sequence numbers, timestamp origin, header,
    SRTP and socket, and `send()`, which hands one picture's packets to the socket, a whole
    picture without yielding. Called by the sender's own loop (`send_rtp_once`) or, while the
    viewer is in step with its feed, by the feed's fan-out, which sends every viewer's picture
    in one pass (camtrack.outputs.webrtc.fanout)."""

    def __init__(self, sender: RTCRtpSender, codec: RTCRtpCodecParameters, stats: RtpSendStats,
                 history: _History, pictures: SentPictures | None = None) -> None:
        self.sender = sender
        self.codec = codec
        self.stats = stats
        #: the RTP timestamps of the pictures sent lately, by capture time (None: not kept)
        self.pictures = pictures
        self._dtls = sender.transport
        self._mid: str | None = aiortc_seam.mid(sender)
        self._payload_type: int = codec.payloadType or 0
        self._ssrc: int = aiortc_seam.ssrc(sender)
        history.payload_type, history.ssrc, history.mid = self._payload_type, self._ssrc, self._mid
        self._sent = history.sent
        #: the ICE connection's nominated pair by component (the live dict)
        self._nominated = aioice_seam.nominations(aiortc_seam.ice_connection(self._dtls))
        self._sequence_number = random_sequence_number()
        self._origin = random32()
        self._octets = 0
        self._template = _HeaderTemplate(
            self._payload_type, self._ssrc, self._mid,
            aiortc_seam.header_extensions_map(sender))
        self._protect: Callable[[bytes], bytes] | None = None
        #: the nominated pair the send below was found for
        self._pair: CandidatePair | None = None
        self._send_all: Callable[[list[bytes]], int] | None = None

    def _sender_for(self, pair: CandidatePair) -> Callable[[list[bytes]], int]:
        """How the pair's packets go out: straight on the shared socket, batched (udpmux.DirectSend)
        when the pair is on the UDP mux, else through aioice's transport a packet at a time."""
        if pair is not self._pair or self._send_all is None:
            transport = pair.protocol.transport
            direct = transport.direct(pair.remote_addr) if isinstance(transport, MuxTransport) else None
            if direct is None:
                sendto, remote = transport.sendto, pair.remote_addr

                def send_each(packets: list[bytes]) -> int:
                    for packet in packets:
                        sendto(packet, remote)
                    return 0

                self._send_all = send_each
            else:
                self._send_all = direct
            self._pair = pair
        return self._send_all

    def send(self, frame: RtpFrame) -> bool:
        """Hand `frame`'s packets to the socket; False when there was nothing to send (the sender
        is disabled); ConnectionError when the viewer is no longer connected."""
        sender, dtls = self.sender, self._dtls
        payloads = frame.payloads
        if not sending(sender) or not payloads:
            return False
        pair = self._nominated.get(1)
        if not dtls_connected(dtls) or pair is None:
            raise ConnectionError("not connected")
        send_all = self._sender_for(pair)
        protect = self._protect
        if protect is None:
            protect = self._protect = fast_protect(aiortc_seam.tx_srtp(dtls))
        payload_type, sent = self._payload_type, self._sent
        timestamp = (self._origin + frame.timestamp) & 0xFFFFFFFF
        ntp = frame.ntp
        abs_send_time = (ntp >> 14) & 0x00FFFFFF
        first, rest = self._template.header(timestamp, abs_send_time)
        first_seq = sequence_number = self._sequence_number
        picture = (first_seq, timestamp, payloads, abs_send_time)
        pack = _HEAD.pack
        last = len(payloads) - 1
        packets = []
        octets = 0
        for index, payload in enumerate(payloads):
            sent[sequence_number % RTP_HISTORY_SIZE] = picture
            packets.append(protect(pack(first, (index == last) << 7 | payload_type, sequence_number) + rest + payload))
            octets += len(payload)
            sequence_number = (sequence_number + 1) & 0xFFFF
        dropped = send_all(packets)
        self._sequence_number = sequence_number
        self._octets += octets
        if self.pictures is not None:
            self.pictures.add(frame.captured, timestamp)
        stats = self.stats
        stats.frames += 1
        stats.packets += len(payloads)
        stats.dropped += dropped
        # what aiortc's loop keeps for its sender reports and statistics: the picture's RTP time
        # paired with its capture time (not when it was sent, which varies with each picture's
        # encoding and queueing), so that a receiver lines this stream up with the camera's others
        # (its sound: camtrack.media.audio) by when they were captured
        reported = _ntp_of(frame.captured) if frame.captured > 0 else ntp
        record_sent(sender, dtls, reported, timestamp, self._octets, stats.packets, sum(map(len, packets)), len(payloads))
        return True


def send_rtp_once(sender: RTCRtpSender, next_frame: Callable[[RTCRtpCodecParameters], Awaitable[RtpFrame]],
                  on_sent: Callable[[float, float, float], None] | None = None,
                  join: Callable[[RtpStream], Awaitable[None] | None] | None = None,
                  pictures: SentPictures | None = None) -> RtpSendStats:
    """Replace `sender`'s RTP loop with one that sends pictures already packetized.

    aiortc's loop packetizes every picture again for every viewer, builds an RtpPacket and its
    header extensions per packet, and awaits four coroutines per packet down to the socket. This
    one takes each picture's payloads as they were packetized once for all viewers and sends
    them with an `RtpStream`. RTCP (reports, PLI/FIR, NACK through `__rtp_history`) stays
    aiortc's. `on_sent(captured, seconds, handed)` is called once a picture has been handed to
    the socket, with the CPU seconds that took and the time it was handed. After each picture, `join(stream)` may hand the stream
    to a fan-out that sends the following pictures itself: it returns what to await until the
    fan-out hands the stream back (or raises ConnectionError), or None to go on here. `pictures`,
    if given, keeps the RTP timestamp of each picture sent by its capture time. Call before the
    connection starts the sender.
    """
    stats = RtpSendStats()
    history = _History()
    aiortc_seam.set_rtp_history(sender, history)

    async def run_rtp(codec: RTCRtpCodecParameters) -> None:
        aiortc_seam.rtp_started(sender).set()
        stream = RtpStream(sender, codec, stats, history, pictures)
        try:
            while True:
                frame = await next_frame(codec)
                began = time.thread_time()  # (CPU time: a quota's throttling is not work)
                if stream.send(frame) and on_sent is not None:
                    on_sent(frame.captured, time.thread_time() - began, time.time())
                if join is not None:
                    fanned = join(stream)
                    if fanned is not None:
                        await fanned
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:  # as aiortc's loop: RTCRtpSender.stop() waits for __rtp_exited
            logger.exception("RTP sending loop failed")
        finally:
            track = sender.track
            if track is not None:
                track.stop()
            aiortc_seam.rtp_exited(sender).set()

    aiortc_seam.replace_run_rtp(sender, run_rtp)
    return stats

