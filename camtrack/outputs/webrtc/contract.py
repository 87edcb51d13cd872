"""What WebRTC outputs (signaling, WHEP) need of a viewer's peer, and of the camera it shows.

Signaling and WHEP make a viewer's peer with a `PeerFactory` the application chose (camtrack.app):
the local one (camtrack.outputs.webrtc.peer.LocalPeers: the peer lives in this process) or the worker
pool's (camtrack.workers.pool.WorkerPeers: in a worker process when there is one to take it). What
comes back is a `PeerSession`; neither output knows which kind it is, nor imports the workers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from aiortc import RTCIceCandidate

from ...config import CameraConfig
from ...media.feeds import FrameFeed, PacketFeed, Transport
from ...media.load import LoadMonitor
from ...media.meters import Meter
from ...media.packet import MediaKind
from ...media.reader import PacketReader
from ...media.stream import CameraStream
from ...media.tiers import MAIN, Tier
from ...processing import ProcessingStage


class PeerCamera(Protocol):
    """What a peer reads of its camera: its name and settings (codec, size, bitrate, keyframe
    interval), what each transport sent (its meters), and the server's measured load (None: not
    measured, as in a worker process)."""

    @property
    def name(self) -> str: ...

    @property
    def settings(self) -> CameraConfig: ...

    @property
    def meters(self) -> dict[Transport, Meter]: ...

    @property
    def load(self) -> LoadMonitor | None: ...


class CameraView(PeerCamera, Protocol):
    """What a peer factory reads of a camera to make a peer's track: its shared packet feed (None:
    each viewer encodes its own pictures, from `stream`) and a reader of it, or of another tier of
    it (camtrack.media.tiers), per transport."""

    def packets(self, kind: MediaKind = MediaKind.VIDEO, tier: Tier = MAIN) -> PacketFeed | None:
        """Its `kind` packets of `tier` (None: none; MAIN: each viewer encodes its own pictures)."""

    @property
    def frames(self) -> FrameFeed:
        """Its pictures (what a viewer's own encoder reads)."""

    @property
    def feed(self) -> PacketFeed | None:
        """`packets()` (the name callers used before tiers)."""

    @property
    def stream(self) -> CameraStream: ...

    @property
    def processing(self) -> ProcessingStage | None:
        """Its --process function's stage, whose results go to viewers beside the video (None: none)."""

    def reader(self, transport: Transport, tier: Tier = MAIN) -> PacketReader: ...

    def qualities(self) -> tuple[str, ...]:
        """The qualities a viewer may be on: "main" and the camera's lower tiers ("low")."""
        ...


class PeerSession(Protocol):
    """One viewer's peer connection, wherever it lives. It calls the factory's `on_end(reason)` once
    when it fails, closes, stays disconnected, never connects, or (a worker's) its process dies."""

    @property
    def state(self) -> str:
        """The connection's state, as RTCPeerConnection.connectionState names it."""
        ...

    @property
    def negotiating(self) -> bool:
        """Whether its offer is still being negotiated (state new or connecting)."""
        ...

    def on_state(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever `state` changes (after the peer's own handling of it)."""

    async def answer(self, sdp: str) -> str:
        """The answer to the offer `sdp`: OfferError if it cannot be answered, ServerFull if no
        turn to negotiate came in time (camtrack.outputs.webrtc.peer)."""
        ...

    async def add_candidate(self, candidate: RTCIceCandidate | None) -> None:
        """A trickled remote candidate; None: the remote has no more."""

    async def close(self) -> None:
        """Close it (idempotent, never cancelled half-way, bounded in time)."""

    def choose_quality(self, choice: str) -> None:
        """Its viewer asks for a quality (auto, main, low: docs/quality.md), before or after its offer
        is answered; ValueError for one it cannot have."""

    def quality(self) -> dict[str, Any] | None:
        """Its quality now (choice, tier, reason, moving_to, qualities), None when it has none."""

    def on_quality(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever its tier changes."""


class PeerFactory(Protocol):
    """Makes a viewer's peer of `camera` for `transport` from `remote` (the address, for logs)."""

    def __call__(self, camera: CameraView, transport: Transport, remote: str,
                 on_end: Callable[[str], None]) -> PeerSession: ...
