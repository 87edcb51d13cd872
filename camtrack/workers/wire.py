"""What the main process and a worker say to each other over their socket pair.

Every message is a frame: a 4-byte big-endian length, one byte of kind, then the body. A control
message (kind `C`) is a pickled dict with a "t" (its type): the two ends are the same program,
started by each other, on a socket nobody else holds. A packet (kind `P`) is one encoded picture
of one of a camera's packet feeds (named by its `FeedKey`: the camera, the media kind, the tier),
its bytes as they are, so the worker never unpickles the media. A viewer's sound
(what a worker's peer hears while its viewer talks, worker to main process) is a control message
`heard` with its PCM (`sound`, `frame_of`). A datagram (kind `D`,
main process to worker) is one UDP datagram that arrived on the shared WebRTC port for one of the
worker's peers, with the address it came from.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from ..media.packet import MediaKind
from ..media.tiers import MAIN, Tier

#: the largest frame accepted: a keyframe of an 8K camera fits, garbage does not
MAX_FRAME = 64 * 1024 * 1024
CONTROL, PACKET, DATAGRAM = b"C", b"P", b"D"
_LENGTH = struct.Struct(">IB")
#: a packet's header after the camera name: seq, pts, capture time, keyframe
_PACKET = struct.Struct(">QqdB")
#: a datagram's header after the sender's host: its port
_PORT = struct.Struct(">H")


class BadMessage(ValueError):
    """A frame read whole that carries no message (too long, of an unknown kind, not unpickled to a
    dict): the reader skips it and reads on."""


@dataclass(frozen=True)
class FeedKey:
    """Which packet feed of which camera: what the pumps, the relayed feeds and the wire are keyed
    by (a camera has a feed per media kind and tier, camtrack.media.tiers)."""

    camera: str
    kind: MediaKind = MediaKind.VIDEO
    tier: Tier = MAIN

    @property
    def wire(self) -> str:
        """Its name on the wire: `camera/kind/tier` (a camera's name has no `/`)."""
        return f"{self.camera}/{self.kind}/{self.tier}"

    @classmethod
    def parse(cls, name: str) -> FeedKey:
        """The key named `name` (its `wire`); ValueError when it names none."""
        camera, kind, tier = name.split("/")
        return cls(camera, MediaKind(kind), Tier.parse(tier))


@dataclass(frozen=True)
class WirePacket:
    """One encoded picture of the feed named `feed` (a FeedKey's `wire`), as it crossed the socket."""

    feed: str
    seq: int
    pts: int
    captured: float
    keyframe: bool
    data: bytes


@dataclass(frozen=True)
class WireDatagram:
    """One UDP datagram from `addr` for a worker's peer, as it crossed the socket."""

    addr: tuple[str, int]
    data: bytes


def control(message: dict[str, Any]) -> bytes:
    """The frame of a control message."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body) + 1, CONTROL[0]) + body


def packet(feed: str, seq: int, pts: int, captured: float, keyframe: bool, data: bytes) -> bytes:
    """The frame of one encoded picture of the feed named `feed`."""
    name = feed.encode()
    header = bytes((len(name),)) + name + _PACKET.pack(seq, pts, captured, keyframe)
    return _LENGTH.pack(len(header) + len(data) + 1, PACKET[0]) + header + data


def datagram(addr: tuple[str, int], data: bytes) -> bytes:
    """The frame of one datagram that arrived from `addr`."""
    host = addr[0].encode()
    header = bytes((len(host),)) + host + _PORT.pack(addr[1])
    return _LENGTH.pack(len(header) + len(data) + 1, DATAGRAM[0]) + header + data


def parse_datagram(body: bytes) -> WireDatagram:
    size = body[0]
    host = body[1:1 + size].decode()
    (port,) = _PORT.unpack_from(body, 1 + size)
    return WireDatagram((host, port), body[1 + size + _PORT.size:])


def parse_packet(body: bytes) -> WirePacket:
    size = body[0]
    name = body[1:1 + size].decode()
    seq, pts, captured, keyframe = _PACKET.unpack_from(body, 1 + size)
    return WirePacket(name, seq, pts, captured, bool(keyframe), body[1 + size + _PACKET.size:])


async def read(reader: asyncio.StreamReader) -> dict[str, Any] | WirePacket | WireDatagram:
    """The next message; `asyncio.IncompleteReadError` when the other end is gone; BadMessage (a
    ValueError) for a frame that carries none, read whole (the next read finds the next frame)."""
    head = await reader.readexactly(_LENGTH.size)
    length, kind = _LENGTH.unpack(head)
    if length < 1:
        raise BadMessage(f"a frame of {length} bytes")
    if length > MAX_FRAME:
        left = length - 1
        while left:  # (skipped, never held whole)
            left -= len(await reader.readexactly(min(left, 1 << 20)))
        raise BadMessage(f"a frame of {length} bytes, more than {MAX_FRAME}: skipped")
    body = await reader.readexactly(length - 1)
    if kind == PACKET[0]:
        return parse_packet(body)
    if kind == DATAGRAM[0]:
        return parse_datagram(body)
    if kind != CONTROL[0]:
        raise BadMessage(f"a frame of unknown kind {kind}")
    try:
        message = pickle.loads(body)  # noqa: S301 - our own process at the other end, see above
    except Exception as exc:  # noqa: BLE001 - whatever unpickling raises, the frame is skipped
        raise BadMessage(f"a control message that does not unpickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(message, dict):
        raise BadMessage("a control message is a dict")
    return message


def sound(frame: av.AudioFrame) -> dict[str, Any]:
    """A decoded frame of a viewer's sound as a control message's fields (`frame_of` makes it again)."""
    pcm = frame.to_ndarray()
    return {"pcm": pcm.tobytes(), "dtype": pcm.dtype.str, "format": frame.format.name, "layout": frame.layout.name,
            "rate": frame.sample_rate, "samples": frame.samples, "pts": frame.pts}


def frame_of(message: dict[str, Any]) -> av.AudioFrame:
    """The frame `sound` gave the fields of (ValueError when they make none)."""
    audio_format = av.AudioFormat(message["format"])
    layout = av.AudioLayout(message["layout"])
    channels = len(layout.channels)
    dtype = np.dtype(str(message["dtype"]))
    samples = int(message["samples"])
    shape = (channels, samples) if audio_format.is_planar else (1, samples * channels)
    data = np.frombuffer(message["pcm"], dtype=dtype)
    if data.size != shape[0] * shape[1]:
        raise ValueError(f"{data.size} samples, not {shape[0] * shape[1]}")
    frame = av.AudioFrame.from_ndarray(data.reshape(shape), format=audio_format.name, layout=layout.name)
    frame.sample_rate = int(message["rate"])
    frame.pts = message["pts"]
    return frame
