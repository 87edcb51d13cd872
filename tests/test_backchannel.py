"""Talking to a camera through its ONVIF RTSP back-channel (camtrack.sources.backchannel): GStreamer's
RTSPOnvifServer (tests/gst_onvif_backchannel_server.py) as the camera hears the tone camtrack sends
it, in G.711 µ-law, with the delay from sending to its decoder measured."""

from __future__ import annotations

import fractions
import socket
import subprocess
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

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
