"""SIGTERM stops the real server within 5 s whatever its clients do; a second signal exits at once."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from camtrack.client import Viewer

from .conftest import eventually
from .test_bad_input import make_offer

ROOT = Path(__file__).resolve().parent.parent
HOSTILE_WEBSOCKETS = 5
#: what the issue promises
DEADLINE = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m camtrack` on loopback, its output in a file."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.log = tmp_path / "server.log"
        env = {k: v for k, v in os.environ.items() if k != "CAMTRACK_TOKEN"}
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "camtrack", "--source", "pattern", "--host", "127.0.0.1",
                 "--port", str(self.port), "--ice-address", "127.0.0.1", "--linger", "0.5",
                 "--webrtc-port", "0"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.root = f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def ready(self, timeout: float = 60.0) -> None:
        """Wait until /healthz answers."""
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(timeout):
                while True:
                    assert self.process.poll() is None, f"server exited early:\n{self.output}"
                    try:
                        async with http.get(self.root + "/healthz") as r:
                            if r.status == 200:
                                return
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)

    async def sessions(self) -> int:
        """Viewers and sessions that are not viewers yet: everyone the server will hang up on."""
        async with aiohttp.ClientSession() as http, http.get(self.root + "/healthz") as r:
            health = await r.json()
            return health["viewers"] + sum(s["pending"] for s in health["sources"].values())

    async def exited(self, timeout: float) -> int:
        """The exit status, waiting at most `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while (status := self.process.poll()) is None:
                await asyncio.sleep(0.02)
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def stalled_socket(port: int) -> socket.socket:
    """A connection to the server that reads (almost) nothing: a tiny receive buffer, never read again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def read_head(sock: socket.socket) -> bytes:
    """The response's status line and headers (and whatever followed in the same reads)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1024)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def ws_frame(payload: bytes) -> bytes:
    """A masked websocket text frame, as a client must send it."""
    mask = os.urandom(4)
    length = len(payload)
    head = bytes([0x81, 0x80 | length]) if length < 126 else bytes([0x81, 0x80 | 126]) + length.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def hostile_websocket(port: int) -> socket.socket:
    """A websocket viewer that never reads, fed bad messages so the server writes errors to it."""
    sock = stalled_socket(port)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    assert read_head(sock).startswith(b"HTTP/1.1 101")
    # fewer than the flood limit (60), each answered with an error that quotes its 64 KB type: 3.8 MB that
    # nobody reads, more than the kernel buffers (4 MB with their overhead), so the server's writes stall
    message = b'{"type": "' + b"x" * 64_000 + b'"}'
    data = b"".join(ws_frame(message) for _ in range(59))
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while data:
            data = data[sock.send(data):]
    return sock


def send_queues(port: int) -> dict[int, int]:
    """Bytes waiting in the kernel on the server's side of each connection to `port`, by client port."""
    queues = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(f.split(":")[1], 16) for f in fields[1:3])
        if local == port:
            queues[remote] = int(fields[4].split(":")[0], 16)
    return queues


async def stalled(port: int, sockets: list[socket.socket], timeout: float = 30.0) -> None:
    """Wait until the server's send queue to each of `sockets` is full: not empty, and not moving."""
    if not Path("/proc/net/tcp").exists():
        return
    clients = [sock.getsockname()[1] for sock in sockets]
    before: list[int | None] = []
    async with asyncio.timeout(timeout):
        while True:
            now = [send_queues(port).get(client) for client in clients]
            if now == before and all(now):
                return
            before = now
            await asyncio.sleep(0.25)


def hostile_mjpeg(port: int) -> socket.socket:
    """An MJPEG client whose body is never read."""
    sock = stalled_socket(port)
    sock.sendall(f"GET /mjpeg HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    assert read_head(sock).startswith(b"HTTP/1.1 200")
    return sock


@pytest.fixture
async def hostile_server(tmp_path, loopback_ice) -> AsyncIterator[tuple[Server, Viewer]]:
    """The server with hostile clients attached and one honest viewer playing."""
    server = Server(tmp_path)
    sockets: list[socket.socket] = []
    viewer: Viewer | None = None
    http = aiohttp.ClientSession()
    try:
        await server.ready()
        sockets += [hostile_websocket(server.port) for _ in range(HOSTILE_WEBSOCKETS)]
        sockets.append(hostile_mjpeg(server.port))
        # a peer mid-negotiation: its offer answered, its ICE never run
        negotiating = await http.ws_connect(server.root + "/ws")
        assert (await negotiating.receive_json(timeout=20))["type"] == "hello"
        await negotiating.send_json({"type": "offer", "sdp": await make_offer()})
        assert (await negotiating.receive_json(timeout=20))["type"] == "answer"
        viewer = Viewer(server.root + "/ws")
        await viewer.connect()
        await viewer.frames(30)
        await stalled(server.port, sockets)
        # the server will try to hang up on every hostile client (a viewer or a pending session);
        # polled: /healthz may answer before the last of them is counted (7 of 8 seen once, loaded)
        expected, seen = HOSTILE_WEBSOCKETS + 3, 0
        async with asyncio.timeout(15):
            while (seen := await server.sessions()) != expected:
                await asyncio.sleep(0.2)
        assert seen == expected, server.output
        yield server, viewer
    finally:
        for sock in sockets:
            sock.close()
        if viewer is not None:
            await viewer.close(bye=False)
        await http.close()
        server.kill()


async def test_sigterm_stops_within_5_s_whatever_the_clients_do(hostile_server):
    server, viewer = hostile_server
    start = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    status = await server.exited(DEADLINE + 10)
    took = time.monotonic() - start
    print(f"stopped in {took:.2f} s")
    output = server.output
    assert took < DEADLINE, f"took {took:.1f} s:\n{output}"
    assert status == 0, output
    assert "Traceback" not in output, output
    assert "server shutting down" in output and "stopped in" in output
    # the honest viewer was told, not just cut off
    said = []
    while (message := await viewer.ws.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT:
        said.append(json.loads(message.data)["type"])
    assert said[-1:] == ["bye"], said


@pytest.mark.parametrize("first, second", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGINT),
                                           (signal.SIGTERM, signal.SIGINT)])
async def test_a_second_signal_exits_at_once(hostile_server, first, second):
    server, _ = hostile_server
    server.process.send_signal(first)
    # the hostile websockets hold the graceful part for a while: send the second signal during it
    await eventually(lambda: f"{first.name}: shutting down" in server.output, timeout=10, interval=0.01)
    start = time.monotonic()
    server.process.send_signal(second)
    status = await server.exited(DEADLINE)
    took = time.monotonic() - start
    print(f"exited {took:.2f} s after the second signal")
    output = server.output
    assert status == 128 + second, output  # the second signal's exit, not the graceful one
    assert took < 1.0, output
    assert output.count("camtrack: second signal, exiting now\n") == 1, output
    assert "Traceback" not in output, output
