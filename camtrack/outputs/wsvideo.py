"""Video over the websocket itself: the fallback for viewers whose network blocks WebRTC's UDP.

A session on `/ws` that sends `{"type": "stream"}` gets its camera's packet feed (the shared
encoder's packets, or a passed-through camera's own) as binary messages: no decode, no encode,
the very packets WebRTC viewers get. Each message is one picture behind a fixed header:

    offset  size  field
    0       1     version, 1
    1       1     flags: 1 keyframe, 2 a codec block follows the header, 4 pictures were skipped
                  before this one (the stream resynced at this keyframe), or the stream moved to
                  another quality tier at this keyframe (its sequence numbers are that tier's)
    2       2     length of the codec block (0 when none)
    4       4     the feed's sequence number of the picture, modulo 2**32
    8       8     presentation time, 90 kHz ticks
    16      8     capture time, microseconds since the Unix epoch
    24      n     codec block (every keyframe): UTF-8 JSON {"codec": "avc1.42e01f", "width": 640,
                  "height": 480}, the codec string as WebCodecs and Media Source Extensions take it
    24+n    ...   the picture: an H.264 access unit in Annex-B form (SPS and PPS in front of every
                  IDR), or a VP8 frame

With `{"type": "stream", "audio": true}` the camera's sound comes on the same socket, interleaved
(docs/audio.md): a message with flag 8 (audio) carries one 20 ms Opus packet, its presentation time
in 48 kHz ticks (the sound's own clock; the capture time lines it up with the pictures), its first
one a codec block {"codec": "opus", "sampleRate": 48000, "numberOfChannels": 1}. A client that does
not ask gets no audio message.

All integers are big-endian. The stream starts at a keyframe. For a camera with a processing
function, text messages come between them: its results, each naming the picture it describes by
that picture's presentation time (`"pts"`), and its status (camtrack.outputs.results). A reader that falls further behind
than the feed's ring holds skips to the next keyframe (flag 4), so nothing is ever queued for a
slow one; one that reads nothing is cut off by the socket's send time-out.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Awaitable, Callable

from ..media.feeds import FeedClosed
from ..media.frame import VIDEO_CLOCK_RATE
from ..media.packet import CodecInfo, EncodedPacket
from ..media.packetreader import PacketReader, Reading
from ..media.quality import AutoQuality, TierReader
from .results import SentPictures

VERSION = 1
KEYFRAME = 1
CODEC_BLOCK = 2
RESYNC = 4
#: the message carries the camera's sound (asked for with "audio": true)
AUDIO = 8
HEADER = struct.Struct(">BBHIQQ")


def codec_string(codec: CodecInfo, data: bytes) -> str:
    """The codec as WebCodecs and MSE name it; for H.264 from the keyframe's own SPS (a passed-through
    camera may send Main or High whatever the SDP said)."""
    if codec.codec == "vp8":
        return "vp8"
    at = data.find(b"\x00\x00\x01")
    while 0 <= at and at + 6 < len(data):
        if data[at + 3] & 0x1F == 7:
            return "avc1." + data[at + 4:at + 7].hex()
        at = data.find(b"\x00\x00\x01", at + 3)
    return "avc1." + (codec.profile_level_id or "42e01f")


def audio_message(packet: EncodedPacket, first: bool) -> bytes:
    """The binary message carrying an audio packet (flag AUDIO; the codec block on the `first`)."""
    data = bytes(packet.packet)
    block = json.dumps({"codec": packet.codec.codec, "sampleRate": packet.codec.clock_rate, "numberOfChannels": 1},
                       separators=(",", ":")).encode() if first else b""
    captured = max(0, round(packet.captured * 1_000_000))
    return HEADER.pack(VERSION, AUDIO | (CODEC_BLOCK if first else 0), len(block), packet.seq & 0xFFFFFFFF,
                       max(0, packet.packet.pts or 0), captured) + block + data


def message(packet: EncodedPacket, pts: int, resync: bool) -> bytes:
    """The binary message carrying `packet` (see the module's docstring)."""
    data = bytes(packet.packet)
    flags = (KEYFRAME if packet.keyframe else 0) | (RESYNC if resync else 0)
    block = b""
    if packet.keyframe:
        codec = packet.codec
        block = json.dumps({"codec": codec_string(codec, data), "width": codec.width,
                            "height": codec.height}, separators=(",", ":")).encode()
        flags |= CODEC_BLOCK
    captured = max(0, round(packet.captured * 1_000_000))
    return HEADER.pack(VERSION, flags, len(block), packet.seq & 0xFFFFFFFF, max(0, pts), captured) + block + data


#: a stream's link is sampled this often (seconds): a sample in which its sends waited more than
#: SEND_BUSY of the time (the socket's buffers full: the link in front of the viewer carries less
#: than the tier) is a bad one (camtrack.media.quality.AutoQuality)
SAMPLE = 0.5
SEND_BUSY = 0.5


class PacketStream:
    """One websocket viewer's reading of a camera's packets (a `PacketReader`: from a keyframe on,
    resyncing at the next keyframe when it fell behind, bridged while it joins a passed-through
    camera between its keyframes); `run(send)` hands each message to `send`, which returns False
    when the socket is gone (or too slow) and the stream should end."""

    def __init__(self, reader: Callable[[], Reading], on_move: Callable[[], None] | None = None,
                 audio: Callable[[], PacketReader] | None = None) -> None:
        self._make_reader = reader
        self._make_audio = audio
        self.reader: Reading | None = None
        self.sent = 0
        #: the presentation times of the pictures sent lately, by capture time (what the
        #: processing results sent beside them name: camtrack.outputs.results)
        self.pictures = SentPictures()
        #: audio messages sent (with "audio": true)
        self.audio_sent = 0
        #: called when its tier changes (a TierReader's move)
        self.on_move = on_move
        #: the server's choice of its tier from its send queue, while it reads a camera's tiers
        self.auto: AutoQuality | None = None

    def choose(self, choice: str) -> None:
        """The viewer asks for a quality (camtrack.media.quality.CHOICES); ValueError: it cannot."""
        if isinstance(self.reader, TierReader):
            self.reader.choose(choice)

    def quality(self) -> dict[str, object] | None:
        """Its quality now (choice, tier, reason, moving_to, qualities), None when it has none."""
        reader = self.reader
        if not isinstance(reader, TierReader):
            return None
        return {"choice": reader.choice, "tier": reader.quality, "reason": reader.reason,
                "moving_to": reader.moving_to, "qualities": list(reader.available)}

    @property
    def skipped(self) -> int:
        """Pictures skipped over because the reader fell behind."""
        return self.reader.skipped if self.reader is not None else 0

    @property
    def resyncs(self) -> int:
        return self.reader.resyncs if self.reader is not None else 0

    async def run(self, send: Callable[[bytes], Awaitable[bool]]) -> None:
        reader = self.reader = self._make_reader()
        auto = None
        if isinstance(reader, TierReader):
            if self.on_move is not None:
                on_move = self.on_move
                reader.on_move = lambda *_: on_move()
            if len(reader.available) > 1:
                # the tier chosen from this socket's own send queue while it asks for auto: a send
                # that waits means the queue in front of the viewer's link is full (docs/quality.md)
                auto = self.auto = AutoQuality(reader)
        lock = asyncio.Lock()  # (the picture's and the sound's messages: one send at a time)

        async def send_one(data: bytes) -> bool:
            async with lock:
                return await send(data)

        sound = None if self._make_audio is None else asyncio.ensure_future(self._sound(send_one))
        try:
            resyncs, feed = 0, reader.feed
            window, waited = time.monotonic(), 0.0
            while True:
                packet, pts = await reader.next()
                # pictures skipped before this one (counted by the reader, during a tier move too),
                # or the first of another feed (a move to another tier, at its keyframe: the
                # sequence numbers are that tier's from here)
                resync = reader.resyncs != resyncs or (reader.feed is not feed and self.sent > 0)
                resyncs, feed = reader.resyncs, reader.feed
                shown = max(0, pts if pts is not None else packet.packet.pts or 0)
                began = time.monotonic()
                if not await send_one(message(packet, shown, resync)):
                    return
                self.pictures.add(packet.captured, shown)
                self.sent += 1
                if auto is not None:
                    now = time.monotonic()
                    waited += now - began
                    if now - window >= SAMPLE:
                        share = waited / (now - window)
                        auto.observe(f"send queue full {share * 100:.0f}% of the time" if share > SEND_BUSY else None)
                        window, waited = now, 0.0
        finally:
            reader.close()
            if sound is not None:
                sound.cancel()
                await asyncio.gather(sound, return_exceptions=True)

    async def _sound(self, send: Callable[[bytes], Awaitable[bool]]) -> None:
        """The camera's sound beside its pictures, until the socket is gone (or the feed closes)."""
        assert self._make_audio is not None
        reader = self._make_audio()
        try:
            while True:
                packet, _ = await reader.next()
                if not await send(audio_message(packet, self.audio_sent == 0)):
                    return
                self.audio_sent += 1
        except FeedClosed:
            pass
        finally:
            reader.close()


def parse_header(data: bytes) -> dict[str, object]:
    """A message's header and codec block as a dict (for tests and Python clients)."""
    version, flags, block, seq, pts, captured = HEADER.unpack_from(data)
    codec = json.loads(data[HEADER.size:HEADER.size + block]) if block else None
    return {"version": version, "keyframe": bool(flags & KEYFRAME), "resync": bool(flags & RESYNC),
            "audio": bool(flags & AUDIO),
            "seq": seq, "pts": pts, "seconds": pts / VIDEO_CLOCK_RATE, "captured": captured / 1_000_000,
            "codec": codec, "payload": data[HEADER.size + block:]}
