"""The lifecycle a camera stream and a passthrough feed share: the first reader opens the source,
the last one releases it `linger` seconds after it leaves (a reader back in time keeps it open)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar


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


class _Source(Protocol):
    @property
    def description(self) -> str: ...


class ThreadRun(Protocol):
    """One run of a feed's thread (as `ThreadFed` sees it): its source, alive, stopped."""

    @property
    def source(self) -> _Source: ...

    @property
    def alive(self) -> bool: ...

    def stop(self) -> None: ...


R = TypeVar("R", bound=ThreadRun)


class ClosableRing(Protocol):
    def close(self) -> None: ...


class ThreadFed(Lingering, Generic[R]):
    """A feed whose source is read by a thread, one run of it per opening (the audio feed and the
    passthrough feed): the run is stopped on release, and what it hands to the loop is dropped
    once it is no longer the feed's run. Subclasses set `name`, `state`, `_ring` and `_releasing`
    (the log line of a release: feed name, source description)."""

    name: str
    state: str
    _ring: ClosableRing
    _releasing: str

    def __init__(self, linger: float) -> None:
        super().__init__(linger)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._run: R | None = None
        self._released: list[R] = []

    def _release(self) -> None:
        self._release_timer = None
        run, self._run = self._run, None
        if run is None:
            return
        # said by the subclass's module's logger, as before this was shared
        logging.getLogger(type(self).__module__).info(self._releasing, self.name, run.source.description)
        run.stop()
        self._released = [r for r in self._released if r.alive] + [run]
        self._ring.close()
        self.state = "idle"

    def _from_thread(self, run: R, call: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._on_loop, run, call, args)
            except RuntimeError:  # the loop closed in between
                pass

    def _on_loop(self, run: R, call: Callable[..., None], args: tuple[Any, ...]) -> None:
        if run is self._run:  # not a late call from a run being released
            call(*args)
