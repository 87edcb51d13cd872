"""What each way out has sent: counters an operator (and the tests) read, kept per camera."""

from __future__ import annotations

from dataclasses import dataclass, field

from .load import Histogram


@dataclass
class Meter:
    """What one transport has sent of one camera."""

    frames: int = 0
    bytes: int = 0
    negotiation_failures: int = 0
    #: connected WebRTC viewers closed for sending nothing (--unresponsive-timeout)
    unresponsive: int = 0
    #: seconds from a picture's capture to its being handed to a viewer's socket, per viewer
    wire_age: Histogram = field(default_factory=Histogram)

    def sent(self, size: int | None) -> None:
        """One frame handed to a viewer (`size` None when aiortc encodes it and its size is unknown)."""
        self.frames += 1
        if size is not None:
            self.bytes += size
