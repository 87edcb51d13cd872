"""The lifecycle a camera stream and a passthrough feed share: the first reader opens the source,
the last one releases it `linger` seconds after it leaves (a reader back in time keeps it open)."""

from __future__ import annotations

import asyncio


class Lingering:
    """Readers attach and detach; subclasses say whether the source is open, and open and release it."""

    def __init__(self, linger: float) -> None:
        self.linger = linger
        self.consumers: set[object] = set()
        self._release_timer: asyncio.TimerHandle | None = None

    @property
    def is_open(self) -> bool:
        raise NotImplementedError

    def attach(self, reader: object) -> None:
        """Add a reader, opening the source if it is the first."""
        self.consumers.add(reader)
        self._cancel_release()
        if not self.is_open:
            self._open()

    def detach(self, reader: object) -> None:
        """Remove a reader; the source is released `linger` seconds after the last."""
        self.consumers.discard(reader)
        if not self.consumers and self.is_open and self._release_timer is None:
            self._release_timer = asyncio.get_running_loop().call_later(self.linger, self._release)

    def _cancel_release(self) -> None:
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None

    def _open(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """Release the source (and set `_release_timer` to None: the timer, if any, has fired)."""
        raise NotImplementedError
