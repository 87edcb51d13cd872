"""Encoded pictures and what a reader needs to know to use them (the codec and its settings)."""

from __future__ import annotations

import enum
import fractions
from dataclasses import dataclass, field
from typing import Any

import av

from .frame import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE


class MediaKind(enum.StrEnum):
    """What a packet feed carries (a string enum: equal to its value, as aiortc's track and SDP
    kinds are spelled)."""

    VIDEO = "video"
    AUDIO = "audio"


@dataclass(frozen=True)
class CodecInfo:
    """What a packet feed carries: enough for a reader to packetize, mux or decode it.

    Its packets' pts count in `time_base`; on RTP (and wherever a reader needs a media clock: the
    send path, the worker wire, the join bridge) they are `kind` media at `clock_rate` Hz. Nothing
    downstream assumes video at 90 kHz: a feed says what it is here."""

    #: "h264", "vp8" or "jpeg"
    codec: str
    width: int
    height: int
    time_base: fractions.Fraction = VIDEO_TIME_BASE
    #: H.264 profile-level-id as in SDP ("42e01f": constrained baseline 3.1), when it is known
    profile_level_id: str | None = None
    #: parameter sets (H.264 SPS and PPS, Annex-B NAL units) when the stream has them out of band
    parameter_sets: tuple[bytes, ...] = ()
    #: video or audio
    kind: MediaKind = MediaKind.VIDEO
    #: the RTP clock of this media (Hz): 90 kHz for video, the sample rate for audio (48 kHz Opus)
    clock_rate: int = VIDEO_CLOCK_RATE

    def rtp_timestamp(self, pts: int) -> int:
        """`pts` (in `time_base`) on this media's RTP clock (`clock_rate`), truncated as aiortc's
        packetizers convert it."""
        time_base = self.time_base
        if time_base.numerator == 1 and time_base.denominator == self.clock_rate:
            return pts
        return int(pts * time_base * self.clock_rate)

    def seconds(self, ticks: int) -> float:
        """`ticks` of `time_base` in seconds."""
        return float(ticks * self.time_base)


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
