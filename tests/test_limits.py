"""Every connection has a deadline and a bound, and --max-viewers counts viewers: each attack of
issue 9 on connections, with an honest viewer watching throughout."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import gc
import json
import logging
import os
import resource
import socket
import struct
import subprocess
import sys
import termios
import time

import aiohttp

from camtrack import connections, logs
from camtrack.app import CAMERAS
from camtrack.client import Viewer
from camtrack.outputs import mjpeg
from camtrack.outputs.webrtc import signaling

from .conftest import eventually
from .test_bad_input import expect, make_offer
from .test_mjpeg import read_parts


def address(url: str) -> tuple[str, int]:
    host, port = url.split("//")[1].split("/")[0].split(":")
    return host, int(port)


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> None:
    """Read (and drop) until the server closes the connection."""
    async with asyncio.timeout(timeout):
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass


# --- request headers and bodies -------------------------------------------------------------------

async def test_slow_headers_and_idle_keepalive_are_closed(serve):
    url, app = await serve(width=320, height=240, header_timeout=1.0)
    host, port = address(url)
    viewer = Viewer(url)
    await viewer.connect()
    await viewer.frames(5)

    async def slow_headers() -> float:
        """Send a request's headers one byte every 0.2 s; seconds until the server hangs up."""
        reader, writer = await asyncio.open_connection(host, port)
        started = time.monotonic()
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000

        async def trickle() -> None:
            for byte in request:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.2)

        trickling = asyncio.ensure_future(trickle())
        try:
            await closed_by_server(reader, 10)
        finally:
            trickling.cancel()
            writer.close()
        return time.monotonic() - started

    async def idle_keepalive() -> float:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        await closed_by_server(reader, 10)
        writer.close()
        return time.monotonic() - started

    held = await asyncio.gather(*(slow_headers() for _ in range(100)), idle_keepalive())
    print(f"\nslow-header connections closed after {min(held[:-1]):.1f}-{max(held[:-1]):.1f} s, "
          f"idle keep-alive after {held[-1]:.1f} s (header_timeout 1 s)")
    assert all(0.9 < t < 3.0 for t in held), held
    assert app_tracker(app).timed_out >= 101
    await viewer.frames(10)  # the honest viewer played on
    await viewer.close()


async def test_requests_whose_answers_are_never_read_are_closed(serve):
    """Thousands of pipelined GETs whose responses the client never reads: the handler stalls
    writing, which is "serving a request", so only the stall check frees the connection."""
    url, app = await serve(width=320, height=240, header_timeout=1.0)
    host, port = address(url)
    viewer = Viewer(url)
    await viewer.connect()
    await viewer.frames(5)
    request = b"GET /static/ui.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 3000
    socks = []
    for _ in range(3):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, port))
        sock.setblocking(False)
        socks.append(sock)
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    try:
        await asyncio.gather(*(loop.sock_sendall(sock, request) for sock in socks))
        tracker = app_tracker(app)
        await eventually(lambda: tracker.stalls >= 3, timeout=20)
        took = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    print(f"\n3 connections that never read their answers: closed after {took:.1f} s (header_timeout 1 s)")
    async with aiohttp.ClientSession() as http, http.get(url.replace("/ws", "/healthz")) as r:
        assert r.status == 200
    await viewer.frames(10)  # the honest viewer played on
    await viewer.close()


def app_tracker(app) -> connections.ConnectionTracker:
    """The tracker of the runner serving `app` (the conftest's serve uses make_runner)."""
    runner = next(o for o in gc.get_referrers(app) if isinstance(o, connections.ConnectionRunner))
    return runner.tracker


async def test_whep_bodies_have_a_deadline_and_a_bound(serve):
    url, app = await serve(width=320, height=240, header_timeout=1.0)
    host, port = address(url)
    viewer = Viewer(url)
    await viewer.connect()
    await viewer.frames(5)
    head = (f"POST /whep HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/sdp\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n").encode()

    async def never_ending() -> tuple[bytes, float]:
        """A chunked body a chunk at a time, never ended: the status and when the socket closed."""
        reader, writer = await asyncio.open_connection(host, port)
        started = time.monotonic()
        writer.write(head)

        async def trickle() -> None:
            while True:
                writer.write(b"a\r\n0123456789\r\n")
                await asyncio.sleep(0.1)

        trickling = asyncio.ensure_future(trickle())
        try:
            status = await asyncio.wait_for(reader.readline(), 10)
            await closed_by_server(reader, 10)
        finally:
            trickling.cancel()
            writer.close()
        return status, time.monotonic() - started

    async def oversized() -> tuple[bytes, int]:
        """A chunked body as fast as the server takes it: the status, and how much it took."""
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(head)
        sent = 0
        chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
        reply = asyncio.ensure_future(reader.readline())
        try:
            while not reply.done() and sent < 64 * 2**20:
                writer.write(chunk)
                sent += 0x4000
                await writer.drain()
            status = await asyncio.wait_for(reply, 10)
            await closed_by_server(reader, 10)
        except ConnectionError:
            status = await asyncio.wait_for(reply, 10)
        finally:
            writer.close()
        return status, sent

    results = await asyncio.gather(*(never_ending() for _ in range(20)), oversized())
    slow, (big_status, big_sent) = results[:-1], results[-1]
    print(f"\nnever-ending WHEP bodies: {slow[0][0].strip().decode()}, closed after "
          f"{min(t for _, t in slow):.1f}-{max(t for _, t in slow):.1f} s; an endless fast body: "
          f"{big_status.strip().decode()} after {big_sent // 1024} KiB sent")
    assert all(status.startswith(b"HTTP/1.1 408") for status, _ in slow), slow
    # the deadline (1 s), then at most the lingering read of what is left (2 s)
    assert all(t < 1 + connections.LINGERING_TIME + 1.5 for _, t in slow), slow
    assert big_status.startswith(b"HTTP/1.1 413"), big_status
    assert big_sent < 64 * 2**20
    await viewer.frames(10)
    await viewer.close()


SERVER = """
import asyncio, sys
from aiohttp import web
from camtrack import Config, create_app
from camtrack.connections import make_runner

async def main():
    config = Config(host="127.0.0.1", port=0, source="pattern", width=320, height=240, linger=0.5,
                    ice_addresses=["127.0.0.1"], webrtc_port=0)
    runner = make_runner(create_app(config), config, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], runner.tracker.cap, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def low_fd_limit() -> None:
    # soft 200, hard 300: the server raises its soft limit to 300 itself
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, 300))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    line = next(x for x in open(f"/proc/{pid}/status") if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


async def test_connection_flood_at_the_fd_limit(loopback_ice):
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, preexec_fn=low_fd_limit,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    flood: list[asyncio.StreamWriter] = []
    viewer: Viewer | None = None
    try:
        line = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, server.stdout.readline), 30)
        port, cap = map(int, line.split())
        limits = open(f"/proc/{server.pid}/limits").read()
        soft = int(next(x for x in limits.splitlines() if x.startswith("Max open files")).split()[3])
        assert soft == 300, limits
        root = f"http://127.0.0.1:{port}"
        viewer = Viewer(root + "/ws")
        await viewer.connect()
        await viewer.frames(5)
        before, rss_before = fd_count(server.pid), rss_mb(server.pid)

        async def slow_header_connection() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
            flood.append(writer)

        for _ in range(4):  # 400 connections, more than the server's open-file limit
            await asyncio.gather(*(slow_header_connection() for _ in range(100)))
        # a burst of accepts may touch the limit for a moment on a busy machine (the evictions it
        # causes are closed on the loop's next turns): the server is back under it at once
        await eventually(lambda: fd_count(server.pid) < soft - 20, timeout=5, interval=0.1)
        most, rss_most = fd_count(server.pid), rss_mb(server.pid)
        async with aiohttp.ClientSession() as http:
            for _ in range(5):
                async with http.get(root + "/healthz", timeout=aiohttp.ClientTimeout(total=10)) as r:
                    assert r.status == 200
                    assert (await r.json())["viewers"] == 1
        frames = await viewer.frames(30)  # the honest viewer played on, at the cap
        assert len(frames) == 30
        print(f"\nfd limit 200:300 -> soft {soft}, connection cap {cap}; 400 slow-header connections: "
              f"server fds {before} -> {most}, RSS {rss_before:.0f} -> {rss_most:.0f} MB; /healthz answered, "
              f"the viewer played")
        assert most < soft - 20
        assert rss_most - rss_before < 30
    finally:
        for writer in flood:
            writer.close()
        if viewer is not None:
            await viewer.close()
        server.terminate()
        server.wait(10)


# --- websockets that do not read ------------------------------------------------------------------

def raw_websocket(host: str, port: int, path: str = "/ws") -> socket.socket:
    """A websocket client socket that reads the handshake and then nothing, with a small window."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def ws_frame(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    elif len(payload) < 65536:
        header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    else:
        header += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def unsent(sock_fd: int) -> int:
    """Bytes in a socket's kernel send queue."""
    return struct.unpack("i", fcntl.ioctl(sock_fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]


async def test_websocket_that_does_not_read(serve, caplog, monkeypatch):
    # let a client make the server write as fast as it likes (the flood limit is another test's),
    # and wait 2 s for a send rather than 5, to keep the test short
    monkeypatch.setattr(signaling, "MESSAGE_BURST", 10**6)
    monkeypatch.setattr(signaling, "SEND_TIMEOUT", 2.0)
    monkeypatch.setattr(logs, "SUMMARY_DELAY", 0.5)
    caplog.set_level(logging.INFO, logger="camtrack")
    url, app = await serve(width=320, height=240)
    host, port = address(url)
    viewer = Viewer(url)
    await viewer.connect()
    await viewer.frames(5)
    cameras = app[CAMERAS]
    big = json.dumps({"type": "x" * 60_000})

    # an error echoes at most a clipped part of what the client sent
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.receive_json()
        await ws.send_str(big)
        error = await ws.receive_json()
        assert error["type"] == "error" and len(error["message"]) <= signaling.MAX_ERROR, len(error["message"])

    started = time.monotonic()
    loop = asyncio.get_running_loop()
    socks = await asyncio.gather(*(loop.run_in_executor(None, raw_websocket, host, port) for _ in range(20)))
    sessions = [s for s in cameras.pending]
    assert len(sessions) == 20
    buffered: list[int] = []

    # many short bad messages: each makes the server write an error of ~250 bytes
    burst = ws_frame(json.dumps({"type": "y" * 150})) * 50

    def writing() -> None:
        for sock in socks:
            try:
                sock.send(burst, socket.MSG_DONTWAIT)
            except (BlockingIOError, ConnectionError):
                pass

    async def flood_until_closed() -> None:
        while any(s.reason is None for s in sessions):
            await asyncio.get_running_loop().run_in_executor(None, writing)
            held = []
            for session in sessions:
                transport = session.connection
                if session.reason is None and transport is not None and not transport.is_closing():
                    held.append(transport.get_write_buffer_size() + unsent(transport.get_extra_info("socket").fileno()))
            buffered.append(max(held, default=0))
            await asyncio.sleep(0.05)

    await asyncio.wait_for(flood_until_closed(), 15)
    took = time.monotonic() - started
    reasons = {s.reason for s in sessions}
    await viewer.frames(10)  # the honest viewer played on
    for sock in socks:
        sock.settimeout(5)
        try:
            while sock.recv(65536):  # what was sent before the reset, then the reset
                pass
        except ConnectionError:
            pass
        sock.close()
    await eventually(lambda: not cameras.pending)

    def signaling_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name.startswith("camtrack.outputs.webrtc.signaling")]

    # the summary of what was left out comes SUMMARY_DELAY after the first line dropped
    await eventually(lambda: any("suppressed" in line for line in signaling_lines()), timeout=10)
    lines = signaling_lines()
    print(f"\n20 websockets that do not read: closed after {took:.1f} s ({reasons}); at most "
          f"{max(buffered) // 1024} KiB held for one (socket buffer {signaling.SEND_BUFFER // 1024} KiB, "
          f"doubled by the kernel); {len(lines)} log lines, the longest {max(map(len, lines))} chars")
    assert all("did not read" in r for r in reasons), reasons
    assert max(buffered) < 200 * 1024, buffered
    assert max(map(len, lines)) < 400
    assert any("suppressed" in line for line in lines), lines[-5:]
    assert len(lines) < 100, len(lines)  # thousands of errors were sent
    await viewer.close()


# --- MJPEG ----------------------------------------------------------------------------------------

async def test_mjpeg_minimum_rate_and_a_client_that_left(serve):
    url, app = await serve(width=320, height=240)
    root = url.removesuffix("/ws")
    camera = app[CAMERAS].first
    async with aiohttp.ClientSession() as http:
        for fps in ("0.00001", "0", "nan", "-1"):
            async with http.get(root + f"/mjpeg?fps={fps}") as r:
                assert r.status == 400, fps
        async with http.get(root + f"/mjpeg?fps={mjpeg.MIN_FPS}") as r:
            assert r.status == 200
            await read_parts(r, 1)
            assert len(camera.viewers["mjpeg"]) == 1
            r.connection.transport.abort()  # gone, 5 s before its next frame is due
        left = time.monotonic()
        await eventually(lambda: not camera.viewers["mjpeg"], timeout=5)
        noticed = time.monotonic() - left
        await eventually(lambda: not any(e.running for e in camera.jpeg.values()), timeout=5)
    print(f"\nan MJPEG client at {mjpeg.MIN_FPS} fps that left was noticed after {noticed:.1f} s")
    assert noticed < mjpeg.POLL + 1


async def test_mjpeg_stalled_reader_is_cut_off_and_frees_its_place(serve, monkeypatch):
    monkeypatch.setattr(mjpeg, "STALL_TIMEOUT", 1.5)  # 8 s in service; shorter to keep the test fast
    url, app = await serve(width=640, height=480, mjpeg_fps=30, max_viewers=1)
    host, port = address(url)
    camera = app[CAMERAS].first
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    sock.sendall(f"GET /mjpeg HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    started = time.monotonic()
    await eventually(lambda: len(camera.viewers["mjpeg"]) == 1)
    stalled = next(iter(camera.viewers["mjpeg"]))
    # meanwhile it fills the server: an honest viewer is told so
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        assert await ws.receive_json() == {"type": "error", "message": "server full"}
    await eventually(lambda: not camera.viewers["mjpeg"], timeout=10)
    took = time.monotonic() - started
    assert stalled.reason.startswith("stalled"), stalled.reason
    viewer = Viewer(url)  # its place is free again
    await viewer.connect()
    await viewer.frames(10)
    print(f"\na stalled MJPEG reader was cut off {took:.1f} s after it connected (after {stalled.sent} frames; "
          f"STALL_TIMEOUT {mjpeg.STALL_TIMEOUT} s), then an honest viewer got its place")
    await viewer.close()
    sock.close()


async def test_mjpeg_qualities_are_a_few_tiers(serve):
    url, app = await serve(width=320, height=240, mjpeg_fps=15)
    root = url.removesuffix("/ws")
    camera = app[CAMERAS].first
    async with aiohttp.ClientSession() as http:
        async with http.get(root + "/mjpeg") as honest:
            await read_parts(honest, 2)
            responses = [await http.get(root + f"/mjpeg?quality={q}") for q in range(1, 101, 3)]
            try:
                assert all(r.status == 200 for r in responses)
                await asyncio.gather(*(read_parts(r, 1) for r in responses))
                assert set(camera.jpeg) <= {80, *mjpeg.QUALITY_TIERS}, sorted(camera.jpeg)
                print(f"\n{len(responses)} MJPEG clients, each asking another quality: "
                      f"{len(camera.jpeg)} encoders ({sorted(camera.jpeg)})")
            finally:
                for r in responses:
                    r.close()
            await read_parts(honest, 10)  # the honest client's frames still flow


# --- --max-viewers counts viewers -----------------------------------------------------------------

async def test_max_viewers_counts_viewers_not_sockets(serve):
    url, app = await serve(width=320, height=240, max_viewers=1, max_pending=4, negotiation_timeout=3)
    root = url.removesuffix("/ws")
    cameras = app[CAMERAS]
    # an honest page from 127.0.0.1 opens its socket first (pending) ...
    honest_http = aiohttp.ClientSession()
    attacker = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))
    try:
        honest_ws = await honest_http.ws_connect(url)
        assert (await honest_ws.receive_json())["type"] == "hello"
        # ... then another address: idle websockets and WHEP offers that never connect, more of
        # them than there are pending places
        idle = []
        for _ in range(6):
            ws = await attacker.ws_connect(url)
            assert (await ws.receive_json())["type"] == "hello"
            idle.append(ws)
        for _ in range(3):
            sdp = await make_offer()
            async with attacker.post(root + "/whep", data=sdp, headers={"Content-Type": "application/sdp"}) as r:
                assert r.status == 201, await r.text()
        assert len(cameras.pending) <= 4
        assert cameras.pending_evicted >= 6
        # the flooder's address lost its own sessions, not the honest page's
        assert any(s.remote == "127.0.0.1" for s in cameras.pending)
        assert cameras.viewer_count == 0
        # nobody is locked out: the honest viewer gets in and plays
        viewer = Viewer(url)
        await viewer.connect()
        await viewer.frames(10)
        await eventually(lambda: cameras.viewer_count == 1)
        # and the server is full for the next one, as before
        async with honest_http.ws_connect(url) as ws:
            assert await ws.receive_json() == {"type": "error", "message": "server full"}
            await expect(ws, "close:1013")
        async with honest_http.get(root + "/mjpeg") as r:
            assert r.status == 503
        sdp = await make_offer()
        async with honest_http.post(root + "/whep", data=sdp, headers={"Content-Type": "application/sdp"}) as r:
            assert r.status == 503
        print(f"\nmax-viewers 1, max-pending 4: 6 idle websockets and 3 unconnected WHEP offers; "
              f"{cameras.pending_evicted} pending sessions closed, the honest viewer played")
        await viewer.close()
        await honest_ws.close()
    finally:
        await honest_http.close()
        await attacker.close()
    await eventually(lambda: cameras.viewer_count == 0 and not cameras.pending, timeout=20)
