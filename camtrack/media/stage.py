"""A relay: a consumer of a camera stream that makes something of each frame (an encoder) for
consumers of its own, running only while it has any."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Callable, Generic, TypeVar

from .latest import Latest, Numbered
from .stream import CameraStream, StreamClosed

T = TypeVar("T", bound=Numbered)


class Relay(Generic[T]):
    """Attaches to its stream when its first consumer attaches, detaches after the last leaves.
    Subclasses write `_run(executor)`, which reads frames and `_publish`es what they make, doing
    the heavy work on `executor`, a thread of the relay's own."""

    def __init__(self, stream: CameraStream, name: str, closed_error: Callable[[], Exception]) -> None:
        self.stream = stream
        self.name = name
        self.consumers: set[object] = set()
        self._latest: Latest[T] = Latest(closed_error)
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def latest(self) -> T | None:
        """The newest item, while running."""
        return self._latest.item

    def attach(self, consumer: object) -> None:
        """Add a consumer, starting the relay (and the stream) if it is the first."""
        self.consumers.add(consumer)
        if not self.running:
            self.stream.attach(self)
            self._latest.reopen()
            self._task = asyncio.ensure_future(self._main())

    def detach(self, consumer: object) -> None:
        """Remove a consumer; the last one out stops the relay."""
        self.consumers.discard(consumer)
        if not self.consumers and self._task is not None:
            self._task.cancel()
            self._task = None

    async def next(self, after: int = 0) -> T:
        """The newest item with a sequence number above `after`, waiting for one if needed."""
        return await self._latest.next(after)

    async def close(self) -> None:
        """Stop now (server shutdown)."""
        self.consumers.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _publish(self, item: T) -> None:
        self._latest.publish(item)

    async def _run(self, executor: concurrent.futures.Executor) -> None:
        raise NotImplementedError

    async def _main(self) -> None:
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self.name)
        try:
            await self._run(executor)
        except (asyncio.CancelledError, StreamClosed):
            pass
        finally:
            # the thread may be mid-frame: it finishes, then ends; nobody waits for it here
            executor.shutdown(wait=False)
            if self._task is None or self._task is asyncio.current_task():
                # (unless a newer run already started: the stream and the consumers are its now)
                self._task = None
                self.stream.detach(self)
                self._latest.close()
                self._stopped()

    def _stopped(self) -> None:
        """Called when the relay has stopped."""
