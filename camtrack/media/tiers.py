"""Tiers: the variants of one camera's packets. The camera's own packets (its main feed: the shared
encoder's, or its H.264 passed through) are the MAIN tier; a tier of another codec is encoded from
the camera's pictures by a shared encoder of its own, made the first time a viewer asks for it and
shared by every viewer of that tier. Like every stage, it runs only while someone reads it.

Only the codec names a tier today; a size or bitrate (quality tiers) would be more fields here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .encoder import EncoderSettings, SharedEncoder
from .feeds import FrameFeed, PacketFeed
from .packet import MediaKind

#: the codecs a tier may be encoded in
TIER_CODECS = ("h264", "vp8")


@dataclass(frozen=True)
class Tier:
    """A variant of a camera's packets: `codec` None is the camera's own (MAIN); "vp8" or "h264"
    is that codec, the camera's own packets when they are of it, else encoded for the tier."""

    codec: str | None = None

    def __str__(self) -> str:
        return self.codec or "main"


#: the camera's own packets, whatever their codec
MAIN = Tier()


class Tiers:
    """The packet feeds of one camera by (kind, tier): its main feed, and one shared encoder per
    other codec, reading the camera's frame feed (its stream when the camera is transcoded, the
    decoder of its own packets when they pass through), made at first need.

    `settings` are the tiers' encoder settings (the codec is each tier's); a size of 0x0 encodes at
    the size of the pictures that come (a passed-through camera's own, known only once it opens)."""

    def __init__(self, main: PacketFeed | None, frames: FrameFeed, settings: EncoderSettings) -> None:
        self.main = main
        self.frames = frames
        self.settings = settings
        #: the tiers' encoders made so far, by codec
        self.encoders: dict[str, SharedEncoder] = {}

    def packets(self, kind: MediaKind, tier: Tier = MAIN) -> PacketFeed | None:
        """The feed of `tier`'s `kind` packets: None when the camera has none (audio; MAIN when
        viewers encode for themselves)."""
        if kind != MediaKind.VIDEO:
            return None
        main = self.main
        if tier.codec is None or (main is not None and main.codec.codec == tier.codec):
            return main
        encoder = self.encoders.get(tier.codec)
        if encoder is None:
            if tier.codec not in TIER_CODECS:
                raise ValueError(f"no tier encodes {tier.codec!r} (only {', '.join(TIER_CODECS)})")
            encoder = SharedEncoder(self.frames, dataclasses.replace(self.settings, codec=tier.codec))
            self.encoders[tier.codec] = encoder
        return encoder

    async def close(self) -> None:
        for encoder in self.encoders.values():
            await encoder.close()
