"""Talking to a camera through its ONVIF RTSP back-channel (camtrack.sources.backchannel): GStreamer's
RTSPOnvifServer (tests/gst_onvif_backchannel_server.py) as the camera hears the tone camtrack sends
it, in G.711 µ-law, with the delay from sending to its decoder measured."""

from __future__ import annotations

import asyncio
import fractions
import socket
import subprocess
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from bench.listener import reply, talker
from camtrack.app import ICE
from camtrack.sources.backchannel import BackChannel, find_backchannel
from camtrack.sources.rtsp import RtspUnsupported

from .test_real_rtsp import SYSTEM_PYTHON, gst_available

SERVER = Path(__file__).with_name("gst_onvif_backchannel_server.py")


def tone(start: int, samples: int = 960, loud: bool = True) -> av.AudioFrame:
    t = (start + np.arange(samples)) / 48000
    wave = (np.sin(2 * np.pi * 1000 * t) * 0.5 * 32767 * loud).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(wave[None, :], format="s16", layout="mono")
    frame.sample_rate = 48000
    frame.time_base = fractions.Fraction(1, 48000)
    return frame


def test_the_backchannel_is_found_in_an_onvif_description():
    sdp = ("v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:stream=0\r\na=recvonly\r\n"
           "m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=control:stream=1\r\na=recvonly\r\n"
           "m=audio 0 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=control:stream=2\r\na=sendonly\r\n")
    track = find_backchannel(sdp, "rtsp://cam/x/")
    assert (track.control, track.payload_type, track.codec) == ("rtsp://cam/x/stream=2", 8, "PCMA")
    with pytest.raises(RtspUnsupported, match="no back-channel"):
        find_backchannel(sdp.replace("a=sendonly", "a=recvonly"), "rtsp://cam/x/")
    with pytest.raises(RtspUnsupported, match="MPEG4-GENERIC"):
        find_backchannel(sdp.replace("PCMA/8000", "MPEG4-GENERIC/16000"), "rtsp://cam/x/")


@pytest.mark.slow
def test_a_tone_sent_to_an_onvif_cameras_backchannel_is_heard_there():
    why = gst_available()
    if why is not None:
        pytest.skip(f"GStreamer's RTSP server is not installed ({why})")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    camera = subprocess.Popen([SYSTEM_PYTHON, str(SERVER), str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    heard: list[tuple[float, float]] = []
    try:
        assert camera.stdout is not None
        url = camera.stdout.readline().strip()
        assert url.startswith("rtsp://"), url

        def listen() -> None:
            for line in camera.stdout:  # type: ignore[union-attr]
                if line.startswith("LEVEL "):
                    _, at, rms, _samples = line.split()
                    heard.append((float(at), float(rms)))

        threading.Thread(target=listen, daemon=True).start()
        channel = BackChannel(url)
        for _ in range(40):
            try:
                channel.open()
                break
            except OSError:
                time.sleep(0.25)
                channel = BackChannel(url)
        assert channel.track is not None and channel.track.codec == "PCMU"
        try:
            # a second of silence, then the tone from a known time: when does the camera hear it?
            sent = 0
            began = time.monotonic()
            tone_at = None
            for index in range(100):
                loud = index >= 50
                if loud and tone_at is None:
                    tone_at = time.time()
                channel.send(tone(sent, loud=loud))
                sent += 960
                time.sleep(max(0.0, began + (index + 1) * 0.02 - time.monotonic()))
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not any(rms > 0.1 for _, rms in heard):
                time.sleep(0.05)
        finally:
            channel.close()
    finally:
        camera.kill()
        camera.wait(10)
    assert channel.packets >= 95
    loud = [at for at, rms in heard if rms > 0.1]
    assert loud, heard[-10:]
    quiet_before = [rms for at, rms in heard if at < tone_at]
    assert quiet_before and max(quiet_before) < 0.05
    delay = loud[0] - tone_at
    print(f"talk: the camera's decoder heard the tone {delay * 1000:.0f} ms after it was sent")
    assert 0 <= delay < 1.0


@pytest.fixture
def onvif_camera():
    why = gst_available()
    if why is not None:
        pytest.skip(f"GStreamer's RTSP server is not installed ({why})")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    camera = subprocess.Popen([SYSTEM_PYTHON, str(SERVER), str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    assert camera.stdout is not None
    url = camera.stdout.readline().strip()
    heard: list[tuple[float, float]] = []

    def listen() -> None:
        for line in camera.stdout:  # type: ignore[union-attr]
            if line.startswith("LEVEL "):
                _, at, rms, _samples = line.split()
                heard.append((float(at), float(rms)))

    threading.Thread(target=listen, daemon=True).start()
    yield url, heard
    camera.kill()
    camera.wait(10)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
async def test_a_viewer_talks_to_the_camera_one_at_a_time_with_the_talk_token(serve, onvif_camera, workers):
    """With --workers 2 the two talkers' peers are in worker processes (each in one): the first's
    sound is relayed to the main process, where the line is, and the second is told it is busy."""
    url, heard = onvif_camera
    extra = {"workers": workers, "ice_addresses": ["127.0.0.1"]} if workers else {}
    ws_url, app = await serve(source=url, width=320, height=240, talk="source", talk_token="speak", audio="off",
                              **extra)
    first_parts, first, tone_track = await talker(ws_url)
    second_parts, second, _ = await talker(ws_url)
    if workers:
        assert sum(worker.load for worker in app[ICE].peers.pool.workers) == 2, "the peers are not in workers"
    try:
        # no token, a wrong one: refused, whatever the watching token
        await first.send_json({"type": "talk", "on": True})
        assert "not allowed to talk" in (await reply(first, "talk"))["message"]
        await first.send_json({"type": "talk", "on": True, "token": "nope"})
        assert "not allowed to talk" in (await reply(first, "talk"))["message"]
        # the token: the line opens, the camera hears the viewer's tone
        await first.send_json({"type": "talk", "on": True, "token": "speak"})
        assert (await reply(first, "talk"))["state"] == "on"
        # a second talker to the same camera is told it is busy
        await second.send_json({"type": "talk", "on": True, "token": "speak"})
        assert "busy" in (await reply(second, "talk"))["message"]
        await asyncio.sleep(1.0)
        assert not any(rms > 0.1 for _, rms in heard)  # (silence so far)
        tone_track.loud_at = time.time() + 0.2
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(rms > 0.1 and at >= tone_track.loud_at for at, rms in heard):
            await asyncio.sleep(0.05)
        loud = [at for at, rms in heard if rms > 0.1 and at >= tone_track.loud_at]
        assert loud, heard[-5:]
        print(f"talk: from the viewer's microphone to the camera's decoder in {(loud[0] - tone_track.loud_at) * 1000:.0f} ms")
        assert loud[0] - tone_track.loud_at < 1.5
        # it stops: the line is free for the second
        await first.send_json({"type": "talk", "on": False})
        assert (await reply(first, "talk"))["state"] == "off"
        await second.send_json({"type": "talk", "on": True, "token": "speak"})
        assert (await reply(second, "talk"))["state"] == "on"
    finally:
        for session, ws, pc in (first_parts, second_parts):
            await ws.close()
            await pc.close()
            await session.close()


@pytest.mark.slow
async def test_nobody_talks_without_a_talk_token_or_a_back_channel(serve, onvif_camera):
    url, _heard = onvif_camera
    ws_url, _ = await serve(source=url, width=320, height=240, talk="source", audio="off")
    parts, ws, _ = await talker(ws_url)
    try:
        await ws.send_json({"type": "talk", "on": True, "token": "anything"})
        assert "no --talk-token" in (await reply(ws, "talk"))["message"]
    finally:
        session, ws, pc = parts
        await ws.close()
        await pc.close()
        await session.close()
