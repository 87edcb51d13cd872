"""Video over the websocket (the fallback when WebRTC cannot connect), read with a plain aiohttp client."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import av
import pytest

from camtrack.app import CAMERAS
from camtrack.media.feeds import Transport
from camtrack.outputs.webrtc import signaling
from camtrack.outputs.wsvideo import HEADER, parse_header

from .conftest import eventually
from .test_limits import address, raw_websocket, unsent, ws_frame


async def stream(ws: aiohttp.ClientWebSocketResponse) -> dict:
    """Greeted, ask for the stream; returns the hello."""
    hello = await asyncio.wait_for(ws.receive_json(), 10)
    assert hello["type"] == "hello" and hello["stream"] is True
    await ws.send_str(json.dumps({"type": "stream"}))
    return hello


async def pictures(ws: aiohttp.ClientWebSocketResponse, count: int, timeout: float = 20.0) -> list[dict]:
    """The next `count` binary messages, parsed (text messages in between are returned as errors)."""
    got: list[dict] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            message = await ws.receive()
            if message.type == aiohttp.WSMsgType.BINARY:
                got.append(parse_header(message.data))
            elif message.type == aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"unexpected text message {message.data}")
            else:
                raise AssertionError(f"socket closed: {message}")
    return got


def decode(messages: list[dict]) -> list[av.VideoFrame]:
    codec = av.CodecContext.create("h264", "r")
    frames: list[av.VideoFrame] = []
    for m in messages:
        frames += codec.decode(av.Packet(m["payload"]))
    return frames


@pytest.mark.timeout(60)
async def test_stream_starts_at_a_keyframe_and_counts_as_a_viewer(serve):
    url, app = await serve(width=320, height=240, max_viewers=1)
    root = url.removesuffix("/ws")
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await stream(ws)
        messages = await pictures(ws, 45)
        first = messages[0]
        assert first["version"] == 1 and first["keyframe"] and not first["resync"]
        codec = first["codec"]
        assert codec["codec"].startswith("avc1.42") and (codec["width"], codec["height"]) == (320, 240), codec
        assert first["payload"].startswith(b"\x00\x00\x00\x01") and first["payload"][4] & 0x1F in (7, 9)
        # timestamps and sequence numbers grow; capture times are recent; every keyframe says its codec
        for a, b in zip(messages, messages[1:], strict=False):
            assert b["pts"] > a["pts"] and b["seq"] > a["seq"]
        assert all((m["codec"] is not None) == m["keyframe"] for m in messages)
        assert abs(messages[-1]["captured"] - time.time()) < 2
        frames = decode(messages)  # the very H.264, decodable as it is
        assert len(frames) >= 40 and (frames[-1].width, frames[-1].height) == (320, 240)

        # a viewer like any other: counted in /metrics, /healthz and against --max-viewers
        camera = app[CAMERAS].first
        assert len(camera.viewers[Transport.WS_VIDEO]) == 1
        async with http.get(root + "/metrics") as r:
            text = await r.text()
        assert 'camtrack_viewers{camera="default",transport="ws-video"} 1.0' in text
        assert 'camtrack_frames_sent_total{camera="default",transport="ws-video"}' in text
        async with http.get(root + "/healthz") as r:
            assert (await r.json())["viewers"] == 1
        async with http.ws_connect(url) as late:
            message = await asyncio.wait_for(late.receive_json(), 10)
            assert message == {"type": "error", "message": "server full"}
    await eventually(lambda: camera.viewer_count == 0 and not app[CAMERAS].pending)


@pytest.mark.timeout(60)
async def test_stream_errors_and_switching_back_to_webrtc(serve):
    url, app = await serve(width=320, height=240)
    camera = app[CAMERAS].first
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await stream(ws)
        await pictures(ws, 3)
        await ws.send_str(json.dumps({"type": "stream"}))
        # the error comes between pictures
        async with asyncio.timeout(10):
            while (m := await ws.receive()).type == aiohttp.WSMsgType.BINARY:
                pass
        assert json.loads(m.data) == {"type": "error", "message": "already streaming"}
        await pictures(ws, 3)  # and the stream goes on
        # an offer ends the stream: the session is a pending WebRTC session again
        await ws.send_str(json.dumps({"type": "offer", "sdp": "hello"}))
        async with asyncio.timeout(10):
            while (m := await ws.receive()).type == aiohttp.WSMsgType.BINARY:
                pass
        assert json.loads(m.data)["type"] == "error"
        assert not camera.viewers[Transport.WS_VIDEO] and len(app[CAMERAS].pending) == 1
        await ws.send_str(json.dumps({"type": "bye"}))
    await eventually(lambda: camera.viewer_count == 0 and not app[CAMERAS].pending)

    url, app = await serve(width=320, height=240, encoder="per-viewer")
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        hello = await ws.receive_json()
        assert hello["stream"] is False
        await ws.send_str(json.dumps({"type": "stream"}))
        error = await asyncio.wait_for(ws.receive_json(), 10)
        assert error["type"] == "error" and "per-viewer" in error["message"]


@pytest.mark.timeout(90)
async def test_a_reader_that_does_not_read_is_skipped_then_cut_off(serve, monkeypatch):
    monkeypatch.setattr(signaling, "SEND_TIMEOUT", 3.0)
    # a keyframe every 0.5 s and a high bitrate, so the stalled socket fills within a second
    url, app = await serve(width=640, height=480, bitrate=4_000_000, keyframe_interval=0.5)
    camera = app[CAMERAS].first
    host, port = address(url)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as honest:
        await stream(honest)
        await pictures(honest, 10)
        stalled = await loop.run_in_executor(None, raw_websocket, host, port)
        stalled.sendall(ws_frame(json.dumps({"type": "stream"})))
        await eventually(lambda: len(camera.viewers[Transport.WS_VIDEO]) == 2)
        session = next(s for s in camera.viewers[Transport.WS_VIDEO] if s.stream is not None and s.stream.sent < 5)
        reading = session.stream
        assert reading is not None
        held: list[int] = []
        started = time.monotonic()
        got: list[dict] = []

        async def watch() -> None:
            while session.reason is None:
                transport = session.connection
                if transport is not None and not transport.is_closing():
                    held.append(transport.get_write_buffer_size() + unsent(transport.get_extra_info("socket").fileno()))
                got.extend(await pictures(honest, 1))

        await asyncio.wait_for(watch(), 20)
        took = time.monotonic() - started
        # the honest viewer went on at the camera's rate, never resyncing
        got += await pictures(honest, 30)
        assert not any(m["resync"] for m in got)
        spans = [b["captured"] - a["captured"] for a, b in zip(got, got[1:], strict=False)]
        assert max(spans) < 0.5, max(spans)
        print(f"\na websocket viewer that does not read: {reading.sent} pictures sent, {reading.skipped} "
              f"skipped ({reading.resyncs} resyncs), "
              f"cut off after {took:.1f} s ({session.reason}); at most {max(held) // 1024} KiB held for it")
        assert "did not read" in (session.reason or "")
        assert max(held) < 256 * 1024, held
        stalled.close()
    await eventually(lambda: camera.viewer_count == 0)


@pytest.mark.timeout(90)
async def test_a_slow_reader_skips_to_the_next_keyframe(serve):
    """A reader slower than the stream gets whole GOP pieces, each resync starting at a keyframe."""
    url, app = await serve(width=640, height=480, bitrate=3_000_000, keyframe_interval=0.5)
    host, port = address(url)
    sock = await asyncio.get_running_loop().run_in_executor(None, raw_websocket, host, port)
    sock.sendall(ws_frame(json.dumps({"type": "stream"})))
    sock.settimeout(10)
    buffer = b""

    def read_message() -> bytes:
        nonlocal buffer

        def need(n: int) -> None:
            nonlocal buffer
            while len(buffer) < n:
                chunk = sock.recv(65536)
                assert chunk, "closed"
                buffer += chunk

        while True:
            need(2)
            opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
            at = 2
            if length == 126:
                need(4)
                length, at = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                need(10)
                length, at = int.from_bytes(buffer[2:10], "big"), 10
            need(at + length)
            payload, buffer = buffer[at:at + length], buffer[at + length:]
            if opcode == 2:
                return payload

    def slow_reader(seconds: float) -> list[dict]:
        got = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            got.append(parse_header(read_message()))
            time.sleep(0.1)  # 10 pictures a second of a 30 fps stream: falls behind
        return got

    got = await asyncio.get_running_loop().run_in_executor(None, slow_reader, 6.0)
    sock.close()
    resyncs = [m for m in got if m["resync"]]
    assert got[0]["keyframe"] and resyncs, [(m["keyframe"], m["resync"]) for m in got]
    assert all(m["keyframe"] for m in resyncs)
    for a, b in zip(got, got[1:], strict=False):
        # within a run the pictures follow one another; a gap only at a resync, onto a keyframe
        assert b["seq"] == a["seq"] + 1 or (b["resync"] and b["keyframe"]), (a["seq"], b["seq"], b["resync"])
    assert len(HEADER.pack(1, 0, 0, 0, 0, 0)) == 24
    camera = app[CAMERAS].first
    await eventually(lambda: camera.viewer_count == 0)


@pytest.mark.timeout(90)
async def test_a_cameras_own_h264_joined_mid_gop_is_bridged_then_its_own(serve, tmp_path):
    """Passthrough: a stream opened mid-GOP starts with the join bridge's keyframe of the live
    picture (camtrack.media.reader.BridgedReader, the same as a WebRTC viewer's), then at the
    camera's next IDR goes on with the camera's own High profile packets; timestamps keep growing
    and everything decodes; the bridge and its decoder stop after."""
    from .test_passthrough import FPS, write_h264

    source = str(write_h264(tmp_path / "high.mp4", "high"))
    url, app = await serve(source=source, mode="passthrough", width=320, height=240)
    camera = app[CAMERAS].first
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as first:
        await stream(first)
        got = await pictures(first, FPS)
        assert got[0]["codec"]["codec"].startswith("avc1.64")  # at the camera's first keyframe: its own
        feed = camera.feed
        assert feed is not None and camera.encoder is None and camera.bridge is None
        await eventually(lambda: len(feed._ring.since(lambda p: p.keyframe)) > FPS // 2, timeout=20)  # type: ignore[attr-defined]
        async with http.ws_connect(url) as late:
            await stream(late)
            got = await pictures(late, 6 * FPS, timeout=30)  # through the camera's next IDR, 4 s apart
        start = got[0]
        assert start["keyframe"] and start["codec"]["codec"].startswith("avc1.42"), start["codec"]  # the bridge's
        own = next(i for i, m in enumerate(got) if m["keyframe"] and m["codec"]["codec"].startswith("avc1.64"))
        assert 0 < own < 5 * FPS
        assert all(b["pts"] > a["pts"] for a, b in zip(got, got[1:], strict=False))
        frames = decode(got)
        assert len(frames) >= len(got) - 2 and {(f.width, f.height) for f in frames} == {(320, 240)}
    assert camera.bridge is not None and camera.decoder is not None
    await eventually(lambda: not camera.bridge.running and not camera.decoder.running, timeout=10)
