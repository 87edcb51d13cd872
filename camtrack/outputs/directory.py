"""What the outputs (signaling, WHEP, MJPEG, Janus, metrics) need of the cameras: a directory that
finds a camera and admits, holds and lets go of its viewers (`Cameras`), and the camera as they read
it (`Camera`: a peer's CameraView, its viewers, JPEG encoders and pipeline). camtrack.cameras
implements both; the outputs import neither it nor camtrack.workers (tests/test_layout.py), as
MediaMTX's servers see a path manager through an interface of a few methods."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from ..media.admission import Refused
from ..media.encoder import SharedEncoder
from ..media.feeds import BackgroundOutput, Transport, Viewer
from ..media.jpeg import JpegEncoders
from ..media.load import LoadMonitor
from ..processing import ProcessingStage
from .webrtc.contract import CameraView


class SourceView(Protocol):
    """What a camera's source is doing, whatever the mode (camtrack.pipeline.SourceStatus)."""

    @property
    def state(self) -> str: ...

    @property
    def watched(self) -> bool: ...

    @property
    def opens(self) -> int: ...

    @property
    def frames(self) -> int: ...

    @property
    def decoded(self) -> int: ...

    @property
    def packets(self) -> int | None: ...

    @property
    def failures(self) -> int: ...

    @property
    def stalls(self) -> int: ...

    def detail(self) -> dict[str, Any] | None: ...


class JoinView(Protocol):
    """A camera's join bridge, as its counters."""

    @property
    def joins(self) -> int: ...

    @property
    def runs(self) -> int: ...


class PipelineView(Protocol):
    """What the outputs read of a camera's pipeline (camtrack.pipeline.Pipeline)."""

    @property
    def source(self) -> SourceView: ...

    @property
    def bridge(self) -> JoinView | None: ...

    @property
    def outputs(self) -> Mapping[str, BackgroundOutput]: ...

    def encoders(self) -> Mapping[str, SharedEncoder]: ...

    def quality_encoders(self) -> Mapping[str, SharedEncoder]:
        """The lower quality tiers' encoders made so far, by tier name (docs/quality.md)."""
        ...

    @property
    def processing(self) -> ProcessingStage | None:
        """The --process stage (camtrack.processing), if the camera has a function."""


class Camera(CameraView, Protocol):
    """A camera as the outputs read it: what a peer reads (CameraView), its viewers per transport,
    its sessions not viewers yet (`pending`, kept by the directory), its JPEG encoders and its
    pipeline."""

    pending: int

    @property
    def viewers(self) -> dict[Transport, set[Viewer]]: ...

    @property
    def viewer_count(self) -> int: ...

    @property
    def jpeg(self) -> JpegEncoders: ...

    @property
    def pipeline(self) -> PipelineView: ...


class Cameras(Protocol):
    """The cameras of a server as the outputs use them: find one, and admit, hold and let go of
    its viewers (the viewer limits are the directory's)."""

    @property
    def load(self) -> LoadMonitor: ...

    def __iter__(self) -> Iterator[Camera]: ...

    def get(self, name: str | None) -> Camera | None:
        """The named camera, or the first one when no name is given."""

    def admission(self, camera: Camera, measured: bool = True) -> Refused | None:
        """Whether one more viewer of `camera` may come (None) or why not."""

    def admit(self, camera: Camera, viewer: Viewer) -> Refused | None:
        """Count `viewer` in (no longer pending) unless the server or the camera is full."""

    def leave(self, camera: Camera, viewer: Viewer) -> None:
        """`viewer` is no viewer (and no pending session) any more."""

    def hold(self, camera: Camera, session: Viewer) -> None:
        """Count `session` as pending (the oldest of the busiest client closed at the bound)."""

    def release(self, session: Viewer) -> None:
        """`session` is not pending any more."""
