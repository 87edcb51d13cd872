"""The newest item of a live sequence, and the consumers waiting for a newer one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Numbered(Protocol):
    seq: int


T = TypeVar("T", bound=Numbered)


class Latest(Generic[T]):
    """Holds only the newest item (items number themselves with a growing `seq`): a consumer
    asks for the newest item after the one it has, waits if there is none, and never queues.
    While closed, a consumer with nothing newer gets the closing error."""

    def __init__(self, closed_error: Callable[[], Exception]) -> None:
        self.item: T | None = None
        self._closed_error = closed_error
        self._open = False
        self._waiter: asyncio.Future[T] | None = None

    @property
    def open(self) -> bool:
        return self._open

    def reopen(self) -> None:
        self.item = None
        self._open = True

    def publish(self, item: T) -> None:
        self.item = item
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(item)

    def close(self) -> None:
        """Drop the item and fail whoever waits (and later askers too) with the closing error."""
        self.item = None
        self._open = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(self._closed_error())
            waiter.exception()  # retrieved: maybe nobody is waiting

    async def next(self, after: int = 0) -> T:
        """The newest item with `seq` above `after`, waiting for one if needed."""
        while True:
            item = self.item
            if item is not None and item.seq > after:
                return item
            if not self._open:
                raise self._closed_error()
            if self._waiter is None or self._waiter.done():
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)
