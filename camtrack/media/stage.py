"""A stage: a reader of one feed that makes something of each item (an encoder, JPEG, later
processing or tiers) for readers of its own, running only while it has any."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Generic, TypeVar

from .feeds import Feed, FeedClosed
from .ring import Numbered, Read, Ring

T = TypeVar("T", bound=Numbered)
In = TypeVar("In", bound=Feed)


class Stage(Generic[In, T]):
    """Attaches to its input feed when its first reader attaches, detaches after the last leaves.

    Subclasses write `_run(executor)`, which reads the input and `_publish`es what it makes into
    the stage's ring, doing the heavy work on `executor`, a thread of the stage's own. Stages stack:
    the input is any feed of the right kind, a camera stream or another stage.
    """

    def __init__(self, input: In, name: str, closed_error: Callable[[], Exception], ring_size: int = 1) -> None:
        self.input = input
        self.name = name
        self.consumers: set[object] = set()
        self._ring: Ring[T] = Ring(ring_size, closed_error)
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def latest(self) -> T | None:
        """The newest item, while running."""
        return self._ring.newest

    def attach(self, reader: object) -> None:
        """Add a reader, starting the stage (and its input) if it is the first."""
        self.consumers.add(reader)
        if not self.running:
            self.input.attach(self)
            self._ring.reopen()
            self._task = asyncio.ensure_future(self._main())

    def detach(self, reader: object) -> None:
        """Remove a reader; the last one out stops the stage."""
        self.consumers.discard(reader)
        if not self.consumers and self._task is not None:
            self._task.cancel()
            self._task = None

    async def next(self, after: int = 0, *, newest: bool = False) -> Read[T]:
        """The item after number `after` (see Ring.next), waiting for one if needed."""
        return await self._ring.next(after, newest=newest)

    async def next_in_order(self, after: int = 0) -> T:
        """The item right after number `after`, for readers that need every item (a recorder):
        `Overrun` when they fell further behind than the ring holds."""
        return await self._ring.next_in_order(after)

    async def close(self) -> None:
        """Stop now (server shutdown)."""
        self.consumers.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _publish(self, item: T) -> None:
        self._ring.publish(item)

    async def _run(self, executor: concurrent.futures.Executor) -> None:
        raise NotImplementedError

    def _executor(self) -> tuple[concurrent.futures.Executor, bool]:
        """The executor of a run, and whether the run owns it (shut down when the run ends): by
        default a thread of the run's own. A stage whose work must never run twice at once (a
        user's function) returns one of its whole life instead, so that a new run's work waits
        behind what a stopped run left on its thread."""
        return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self.name), True

    async def _main(self) -> None:
        executor, owned = self._executor()
        try:
            await self._run(executor)
        except (asyncio.CancelledError, FeedClosed):
            pass
        finally:
            if owned:
                # the thread may be mid-item: it finishes, then ends; nobody waits for it here
                executor.shutdown(wait=False)
            if self._task is None or self._task is asyncio.current_task():
                # (unless a newer run already started: the input and the readers are its now)
                self._task = None
                self.input.detach(self)
                self._ring.close()
                self._stopped()

    def _stopped(self) -> None:
        """Called when the stage has stopped."""
