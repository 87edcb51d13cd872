"""MJPEG and snapshots from the same single capture as the WebRTC viewers."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import cv2
import numpy as np

from camtrack.app import CAMERAS
from camtrack.client import Viewer
from camtrack.media import stamp

from .conftest import eventually


async def read_parts(response: aiohttp.ClientResponse, count: int, timeout: float = 20) -> list[bytes]:
    """JPEGs from a multipart/x-mixed-replace body."""
    assert response.content_type == "multipart/x-mixed-replace"
    boundary = response.headers["Content-Type"].split("boundary=")[1].encode()
    parts = []
    async with asyncio.timeout(timeout):
        while len(parts) < count:
            line = await response.content.readline()
            if line.strip() != b"--" + boundary:
                continue
            headers = {}
            while (line := await response.content.readline()).strip():
                key, _, value = line.decode().partition(":")
                headers[key.strip().lower()] = value.strip()
            assert headers["content-type"] == "image/jpeg"
            parts.append(await response.content.readexactly(int(headers["content-length"])))
    return parts


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


async def test_mjpeg_clients_share_one_capture_and_one_encode(serve):
    url, app = await serve(width=640, height=480, mjpeg_fps=15)
    camera = app[CAMERAS].first
    root = url.removesuffix("/ws")
    viewer = Viewer(url)
    await viewer.connect()
    await viewer.frames(3)
    async with aiohttp.ClientSession() as http:
        async with http.get(root + "/mjpeg") as a, http.get(root + "/cameras/default/mjpeg") as b:
            assert a.status == b.status == 200
            first, second = await asyncio.gather(read_parts(a, 20), read_parts(b, 20))
            assert len(camera.viewers["mjpeg"]) == 2
            encoder = camera.jpeg[80]
            # both clients read the same encodes: fewer encodes than JPEGs sent
            assert encoder.encoded < len(first) + len(second)
            assert camera.meters["mjpeg"].frames >= 40
        for data in first + second:
            image = decode(data)
            assert image.shape == (480, 640, 3)
        # decoded JPEGs carry the latency stamp; they are fresh
        assert abs(stamp.latency_ms(stamp.read_stamp(decode(first[-1])))) < 2000
    assert camera.stream.runs == 1  # the WebRTC viewer's capture served MJPEG too
    await eventually(lambda: not camera.viewers["mjpeg"] and not camera.jpeg[80].running)
    await viewer.close()
    await eventually(lambda: not camera.stream.running)


async def test_mjpeg_rate_cap_and_quality(serve):
    url, app = await serve(width=640, height=480, mjpeg_fps=20)
    root = url.removesuffix("/ws")
    async with aiohttp.ClientSession() as http:
        async with http.get(root + "/mjpeg?fps=4") as response:
            await read_parts(response, 1)
            started = time.monotonic()
            await read_parts(response, 8)
            rate = 8 / (time.monotonic() - started)
            assert rate < 6, f"{rate:.1f} fps with ?fps=4"
        async with http.get(root + "/snapshot.jpg?quality=10") as low, \
                http.get(root + "/snapshot.jpg?quality=95") as high:
            assert low.status == high.status == 200 and low.content_type == "image/jpeg"
            small, large = await low.read(), await high.read()
        assert len(small) * 2 < len(large)
        async with http.get(root + "/mjpeg?quality=500") as response:
            assert response.status == 400


async def test_snapshot(serve):
    url, app = await serve(width=320, height=240, token="t0k")
    root = url.removesuffix("/ws")
    async with aiohttp.ClientSession() as http:
        async with http.get(root + "/snapshot.jpg") as response:
            assert response.status == 401
        async with http.get(root + "/mjpeg") as response:
            assert response.status == 401
        async with http.get(root + "/cameras/default/snapshot.jpg",
                            headers={"Authorization": "Bearer t0k"}) as response:
            assert response.status == 200 and response.content_type == "image/jpeg"
            image = decode(await response.read())
        assert image.shape == (240, 320, 3)
        async with http.get(root + "/cameras/nope/snapshot.jpg", headers={"Authorization": "Bearer t0k"}) as r:
            assert r.status == 404
    camera = app[CAMERAS].first
    assert camera.viewers["mjpeg"] == set()  # a snapshot is not a viewer
    await eventually(lambda: not camera.stream.running)


async def test_slow_mjpeg_client_skips_and_does_not_slow_the_others(serve):
    url, app = await serve(width=640, height=480, mjpeg_fps=30)
    camera = app[CAMERAS].first
    root = url.removesuffix("/ws")
    host, port = root.split("//")[1].split(":")
    # a client with a tiny receive window that stops reading after the headers
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(f"GET /mjpeg HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    try:
        async with aiohttp.ClientSession() as http, http.get(root + "/mjpeg") as fast:
            started = time.monotonic()
            parts = await read_parts(fast, 60)
            rate = len(parts) / (time.monotonic() - started)
            assert rate > 15, f"the fast client got {rate:.1f} fps"
            slow = min(camera.viewers["mjpeg"], key=lambda c: c.sent)
            # it is stuck on a full socket: the server did not queue 60 frames for it
            assert slow.sent < 45, slow.sent
            # once it reads again it is skipped ahead to the newest picture, not fed a backlog
            async with asyncio.timeout(20):
                while slow.skipped < 10:
                    await reader.read(2**16)
    finally:
        writer.close()
