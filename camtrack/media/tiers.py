"""Tiers: the variants of one camera's packets. The camera's own packets (its main feed: the shared
encoder's, or its H.264 passed through) are the MAIN tier; a tier of another codec, or of a lower
quality (a smaller size, a lower bitrate and maybe frame rate: `Quality`, the camera's `low` one by
default half its size at a quarter of its bitrate), is encoded from the camera's pictures by a shared
encoder of its own, made the first time a viewer asks for it and shared by every viewer of that
tier. Like every stage, it runs only while someone reads it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .encoder import EncoderSettings, SharedEncoder, even
from .feeds import FrameFeed, PacketFeed
from .packet import MediaKind
from .passthrough import PassthroughFeed

#: the codecs a tier may be encoded in
TIER_CODECS = ("h264", "vp8")
#: the qualities below the camera's own a tier may have (the camera's settings say what each is)
QUALITIES = ("low",)


@dataclass(frozen=True)
class Quality:
    """What a lower quality tier encodes: the camera's pictures scaled by `scale` (width and height,
    rounded to even numbers), at `bitrate` bit/s and at most `fps` frames a second (0: every frame)."""

    scale: float = 0.5
    bitrate: int = 250_000
    fps: float = 0.0


@dataclass(frozen=True)
class Tier:
    """A variant of a camera's packets: `codec` None is the camera's own codec, "vp8" or "h264"
    that codec (the camera's own packets when they are of it, else encoded for the tier); `quality`
    None is the camera's own quality, "low" its low tier (camtrack.config: --low-scale ...)."""

    codec: str | None = None
    quality: str | None = None

    def __str__(self) -> str:
        if self.quality is None:
            return self.codec or "main"
        return self.quality if self.codec is None else f"{self.quality}-{self.codec}"

    @classmethod
    def parse(cls, name: str) -> Tier:
        """The tier `str(tier)` names ("main", "vp8", "low", "low-vp8"; a codec it names is not checked
        here: `Tiers.packets` refuses one no tier encodes); ValueError for an empty codec."""
        if name == "main":
            return cls()
        quality, _, codec = name.partition("-")
        if quality not in QUALITIES:
            quality, codec = "", name
        if not codec and not quality:
            raise ValueError(f"no tier {name!r}")
        return cls(codec or None, quality or None)

    @property
    def quality_name(self) -> str:
        """"main" or the quality's name: what a viewer sees and picks."""
        return self.quality or "main"


#: the camera's own packets, whatever their codec
MAIN = Tier()


class Tiers:
    """The packet feeds of one camera by (kind, tier): its main feed, and one shared encoder per
    other codec, reading the camera's frame feed (its stream when the camera is transcoded, the
    decoder of its own packets when they pass through), made at first need.

    `settings` are the tiers' encoder settings (the codec is each tier's); a size of 0x0 encodes at
    the size of the pictures that come (a passed-through camera's own, known only once it opens).
    `qualities` are the camera's lower qualities by name (none: it has no quality tiers). `own` are
    the camera's own streams of some of them, by name (a PassthroughFeed of an IP camera's
    sub-stream, H.264): such a tier in H.264 is that stream's packets as they come, no encoder."""

    def __init__(self, main: PacketFeed | None, frames: FrameFeed, settings: EncoderSettings,
                 qualities: dict[str, Quality] | None = None, own: dict[str, PassthroughFeed] | None = None) -> None:
        self.main = main
        self.frames = frames
        self.settings = settings
        self.qualities = dict(qualities or {})
        self.own = dict(own or {})
        for name in self.own:
            self.qualities.setdefault(name, Quality())
        #: the tiers' encoders made so far, by codec (the camera's own quality)
        self.encoders: dict[str, SharedEncoder] = {}
        #: the quality tiers' encoders made so far, by tier
        self.quality_encoders: dict[Tier, SharedEncoder] = {}

    def available(self) -> tuple[str, ...]:
        """The qualities a viewer may pick: "main" and the camera's lower ones."""
        return ("main", *self.qualities)

    def packets(self, kind: MediaKind, tier: Tier = MAIN) -> PacketFeed | None:
        """The feed of `tier`'s `kind` packets: None when the camera has none (audio; MAIN when
        viewers encode for themselves)."""
        if kind != MediaKind.VIDEO:
            return None
        if tier.quality is not None:
            return self._quality_encoder(tier)
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

    def _quality_encoder(self, tier: Tier) -> PacketFeed:
        quality = self.qualities.get(tier.quality or "")
        if quality is None:
            raise ValueError(f"this camera has no {tier.quality} tier (it has {', '.join(self.available())})")
        main = self.main
        own = main.codec.codec if main is not None else self.settings.codec
        codec = tier.codec or own
        stream = self.own.get(tier.quality or "")
        if stream is not None and codec == "h264":
            return stream  # the camera's own sub-stream: its packets as they come
        # (named as viewers ask for it: "low" in the camera's own codec, "low-vp8" in the other)
        key = Tier(None if codec == own else codec, tier.quality)
        encoder = self.quality_encoders.get(key)
        if encoder is None:
            if codec not in TIER_CODECS:
                raise ValueError(f"no tier encodes {codec!r} (only {', '.join(TIER_CODECS)})")
            base = self.settings
            fps = min(quality.fps or base.fps, base.fps)
            settings = dataclasses.replace(
                base, codec=codec, bitrate=quality.bitrate, fps=fps, frame_limit=quality.fps,
                width=even(base.width * quality.scale) if base.width else 0,
                height=even(base.height * quality.scale) if base.height else 0,
                scale=1.0 if base.width else quality.scale)
            encoder = SharedEncoder(self.frames, settings)
            self.quality_encoders[key] = encoder
        return encoder

    def all_encoders(self) -> list[SharedEncoder]:
        """Every encoder the tiers made: of other codecs, and of lower qualities."""
        return [*self.encoders.values(), *self.quality_encoders.values()]

    async def close(self) -> None:
        for encoder in self.all_encoders():
            await encoder.close()
        for stream in self.own.values():
            await stream.close()

