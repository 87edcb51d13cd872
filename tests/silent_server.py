"""A camera stuck after its accept, for the tests of stopping a source that opens it and of start-up
with a camera that never answers."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest


class SilentServer:
    """A real TCP server on 127.0.0.1 that accepts and never answers (a camera stuck after its
    accept): a client that opens it waits out its open timeout. Counts the connections it took."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.accepted: list[socket.socket] = []
        #: when the first connection came (time.monotonic())
        self.first: float | None = None
        self._thread = threading.Thread(target=self._accept, name="silent server", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            if self.first is None:
                self.first = time.monotonic()
            self.accepted.append(connection)  # (held open, never read nor answered)

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)
        for connection in self.accepted:
            connection.close()


def open_refused_in(source: Any, error: type[BaseException]) -> float:
    """The seconds `source.open()` took to raise `error` ("stopped ..."); the source closed after."""
    began = time.monotonic()
    try:
        with pytest.raises(error, match="stopped"):
            source.open()
        return time.monotonic() - began
    finally:
        source.close()


def stopped_then_opened(source: Any, error: type[BaseException]) -> float:
    """The feed stopping a run from the loop's thread (the run's stop, then its source's `interrupt`)
    while the run's thread is between its check of the stop and the source's `open`, made
    deterministic: interrupted, then opened. The seconds open took to raise `error` ("stopped")."""
    source.interrupt()
    return open_refused_in(source, error)
