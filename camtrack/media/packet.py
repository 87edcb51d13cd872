"""Encoded pictures and what a reader needs to know to use them (the codec and its settings)."""

from __future__ import annotations

import fractions
from dataclasses import dataclass, field
from typing import Any

import av

from .frame import VIDEO_TIME_BASE


@dataclass(frozen=True)
class CodecInfo:
    """What a packet feed carries: enough for a reader to packetize, mux or decode it."""

    #: "h264", "vp8" or "jpeg"
    codec: str
    width: int
    height: int
    time_base: fractions.Fraction = VIDEO_TIME_BASE
    #: H.264 profile-level-id as in SDP ("42e01f": constrained baseline 3.1), when it is known
    profile_level_id: str | None = None
    #: parameter sets (H.264 SPS and PPS, Annex-B NAL units) when the stream has them out of band
    parameter_sets: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class EncodedPacket:
    """One encoded picture, shared read-only by every reader of its feed."""

    seq: int
    #: what aiortc's packetizers take (its pts, in `codec.time_base`, is the RTP timestamp's source)
    packet: av.Packet[Any]
    keyframe: bool
    #: capture time of the picture, seconds since the epoch
    captured: float
    size: int
    codec: CodecInfo
    #: what an output made of this packet once for all its readers (RTP payloads, by codec),
    #: so that no reader redoes it; filled by the first reader that needs it
    shared: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
