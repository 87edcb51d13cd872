"""A camera stuck after its accept, for the tests of stopping a source that opens it."""

from __future__ import annotations

import socket
import threading


class SilentServer:
    """A real TCP server on 127.0.0.1 that accepts and never answers (a camera stuck after its
    accept): a client that opens it waits out its open timeout. Counts the connections it took."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.url = f"rtsp://127.0.0.1:{self._listener.getsockname()[1]}/cam"
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="silent server", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.accepted.append(connection)  # (held open, never read nor answered)

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)
        for connection in self.accepted:
            connection.close()
