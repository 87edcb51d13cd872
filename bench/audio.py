"""What a camera's sound costs, in one run (issue 24): the lip-sync at an aiortc viewer and in
Chromium (bench/lipsync.py: needs root, as the browser tests), the talk
latency to an ONVIF camera's back-channel and to the server's own ALSA speaker, and server.py serving the test pattern (640x480 at
30 fps, H.264 shared encoder) and its test tone, with --audio auto and --audio off, to 1 and 16
aiortc viewers whose offers ask for video and audio (bench/listener.py, in a process of their own,
decoding both), and the server process's CPU over the same seconds; then the Opus encoder's own
counters from /metrics (one encoder, one encode per 20 ms, whatever the number of listeners).
Then a camera with G.711 sound (GStreamer's RTSP server, tests/gst_rtsp_audio_server.py: H.264
320x240 at 15 fps passed through, PCMU in 20 ms packets) to 16 listeners whose offers take PCMU
(passed through untouched: no decoder, no encoder) against 16 whose offers have only Opus (decoded
and encoded once), and with --audio off.

    python -m bench.audio [--seconds S] [--counts 1,16] [--g711-listeners 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.run import cpu_seconds, free_port, reports, stop_server
from bench.run import start_server as start_server_on

ROOT = Path(__file__).resolve().parent.parent


async def listen(url: str, count: int, seconds: float, codecs: tuple[str, ...] | None = None) -> dict[str, object]:
    """`count` listeners of `url` for `seconds` (after all connected), offering the audio `codecs`
    (MIME types; None: aiortc's every one): frames each got."""
    from bench.listener import Listener

    listeners = [Listener(audio_codecs=codecs) for _ in range(count)]
    for listener in listeners:
        listener.keep_payloads = False
    for listener in listeners:
        listener.keep = False
    began = time.process_time()
    try:
        await asyncio.gather(*(listener.connect(url) for listener in listeners))
        await asyncio.sleep(seconds + 4)  # (the server measures the last `seconds` of these)
        counts = [dict(listener.counts) for listener in listeners]
    finally:
        await asyncio.gather(*(listener.close() for listener in listeners), return_exceptions=True)
    return {"counts": counts, "cpu_seconds": time.process_time() - began}


def row(audio: str, count: int, seconds: float, source: tuple[str, ...] | None = None,
        codecs: str | None = None) -> dict[str, object]:
    """server.py with `--audio audio` serving `source` (its options; the pattern at 640x480, 30 fps by
    default) to `count` listeners offering `codecs` (comma-separated MIME types; None: all)."""
    port = free_port()
    source = source or ("--source", "pattern", "--width", "640", "--height", "480", "--fps", "30")
    server = start_server_on(
        port, [*source, "--audio", audio,
               "--ice-address", "127.0.0.1", "--log-level", "warning", "--webrtc-port", "0", "--max-cpu", "0",
               "--max-loop-lag", "0", "--send-budget", "0", "--max-picture-age", "0"], root=ROOT)
    try:
        client = subprocess.Popen([sys.executable, "-m", "bench.audio", "--client", f"ws://127.0.0.1:{port}/ws",
                                   "--count", str(count), "--seconds", str(seconds),
                                   *(("--codecs", codecs) if codecs else ())],
                                  cwd=ROOT, stdout=subprocess.PIPE, text=True)
        time.sleep(4)  # (connecting)
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        time.sleep(seconds)
        cpu = 100 * (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        (result,) = reports([client])
    finally:
        stop_server(server)

    def metric(name: str) -> float:
        found = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", metrics, re.M)
        return float(found.group(1)) if found else 0.0

    counts = result["counts"]
    return {"audio": audio, "listeners": count, "server_cpu": cpu,
            "client_cpu": 100 * result["cpu_seconds"] / (seconds + 4),
            "audio_fps_min": min(c["audio"] for c in counts) / (seconds + 4),
            "video_fps_min": min(c["video"] for c in counts) / (seconds + 4),
            "encoders": metric("camtrack_audio_encoders_total"),
            "encoded": metric(r"camtrack_audio_frames_total\{camera=\"default\",how=\"encoded\"\}"),
            "passed": metric(r"camtrack_audio_frames_total\{camera=\"default\",how=\"passed\"\}"),
            "encode_seconds": metric("camtrack_audio_encode_seconds_total")}


def start_server(*options: str) -> tuple[subprocess.Popen[str], int]:
    """The test pattern's server with `options`, once it answers, and its port."""
    port = free_port()
    server = start_server_on(port, ["--source", "pattern", "--ice-address", "127.0.0.1", "--log-level", "warning",
                                    "--webrtc-port", "0", *options], root=ROOT)
    return server, port


async def lip_sync_of(url: str, seconds: float) -> dict[str, Any]:
    from bench.listener import Listener, lip_sync

    listener = Listener()
    try:
        await listener.connect(url)
        await asyncio.sleep(seconds)
        return lip_sync(listener)
    finally:
        await listener.close()


def lip_sync_row(seconds: float) -> None:
    """The tone's beeps against the picture's marks at one aiortc viewer (bench.listener.lip_sync)."""
    server, port = start_server("--width", "640", "--height", "480", "--fps", "30")
    try:
        sync = asyncio.run(lip_sync_of(f"ws://127.0.0.1:{port}/ws", seconds))
    finally:
        server.terminate()
        server.wait(10)
    offsets = sorted(sync["offsets_ms"])
    if not offsets:
        print(f"lip-sync: no beep matched a mark ({sync})")
        return
    print(f"lip-sync at one aiortc viewer, 640x480@30: {len(offsets)} beeps, sound minus picture "
          f"min {offsets[0]:.0f} ms, median {offsets[len(offsets) // 2]:.0f} ms, max {offsets[-1]:.0f} ms "
          "(each on its sender's clock as its sender reports map it; the beep's 20 ms frame and the "
          "mark's 33 ms picture bound the resolution)")


def chromium_lip_sync_row(seconds: float = 20.0) -> None:
    """The same beeps and marks as Chromium outputs and shows them (bench.lipsync: Chromium and
    server.py in a network namespace of their own, which needs root), the first 6 s left out
    (Chromium's synchronisation settles over them)."""
    try:
        from bench import lipsync  # (it needs the test extra: pytest, Playwright)

        raw = lipsync.measure_raw(seconds)
    except Exception as exc:  # noqa: BLE001 - no root, no Chromium: said, the rest still runs
        print(f"lip-sync in Chromium: not measured ({type(exc).__name__}: {exc})")
        return
    figures = lipsync.analyse(lipsync.settled(raw, 6.0))
    print(f"lip-sync in Chromium, 640x480@30, after its first 6 s: {lipsync.summary(figures)}")


async def talk_delays(ws_url: str, heard: list[tuple[float, float]], tries: int) -> list[float]:
    """An aiortc viewer talks (bench.listener.talker: silence, then a tone from a known time) `tries`
    times; each time, the seconds until the camera's decoder hears it."""
    from bench.listener import reply, talker

    (session, ws, pc), _, tone = await talker(ws_url)
    delays = []
    try:
        await ws.send_json({"type": "talk", "on": True, "token": "bench"})
        state = await reply(ws, "talk")
        if state.get("state") != "on":
            raise RuntimeError(f"talk refused: {state}")
        for _ in range(tries):
            await asyncio.sleep(1.0)
            tone.loud_at = loud_at = time.time() + 0.1
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not any(rms > 0.1 and at >= loud_at for at, rms in heard):
                await asyncio.sleep(0.01)
            loud = [at for at, rms in heard if rms > 0.1 and at >= loud_at]
            tone.loud_at = None
            if loud:
                delays.append(loud[0] - loud_at)
            await asyncio.sleep(0.5)
    finally:
        await ws.close()
        await pc.close()
        await session.close()
    return delays


def talk_row(tries: int = 5) -> None:
    """Talk latency: an aiortc viewer's tone to the decoder of an ONVIF camera's back-channel
    (GStreamer's RTSPOnvifServer, tests/gst_onvif_backchannel_server.py, as the camera and the source)."""
    camera = subprocess.Popen(["/usr/bin/python3", str(ROOT / "tests" / "gst_onvif_backchannel_server.py"),
                               str(free_port())], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    heard: list[tuple[float, float]] = []
    try:
        assert camera.stdout is not None
        url = camera.stdout.readline().strip()
        if not url.startswith("rtsp://"):
            print(f"talk: no ONVIF camera here ({url})")
            return
        threading.Thread(target=lambda: [heard.append((float(line.split()[1]), float(line.split()[2])))
                                         for line in camera.stdout or () if line.startswith("LEVEL ")],
                         daemon=True).start()
        server, port = start_server("--source", url, "--talk", "source", "--talk-token", "bench", "--audio", "off",
                                    "--width", "320", "--height", "240")
        try:
            delays = sorted(asyncio.run(talk_delays(f"ws://127.0.0.1:{port}/ws", heard, tries)))
        finally:
            server.terminate()
            server.wait(10)
    finally:
        camera.kill()
        camera.wait(10)
    if delays:
        print(f"talk latency, an aiortc viewer's microphone to an ONVIF camera's decoder (G.711 back-channel): "
              f"{len(delays)} of {tries} heard, min {delays[0] * 1000:.0f} ms, median "
              f"{delays[len(delays) // 2] * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms")
    else:
        print("talk latency: the camera heard nothing")


async def alsa_talk_delays(ws_url: str, tries: int) -> list[float]:
    """An aiortc viewer talks to the server's ALSA speaker: silence past the file plugin's buffer, then
    `tries` half-second tones a second apart; the times each tone started (its loud_at)."""
    from bench.listener import reply, talker

    (session, ws, pc), _, tone = await talker(ws_url)
    starts = []
    try:
        await ws.send_json({"type": "talk", "on": True, "token": "bench"})
        state = await reply(ws, "talk")
        if state.get("state") != "on":
            raise RuntimeError(f"talk refused: {state}")
        await asyncio.sleep(3.5)  # (past the 2.7 s the file plugin holds back)
        for _ in range(tries):
            tone.loud_at = loud_at = time.time()
            starts.append(loud_at)
            await asyncio.sleep(0.5)
            tone.loud_at = None
            await asyncio.sleep(1.0)
        await ws.send_json({"type": "talk", "on": False})
        await reply(ws, "talk")
    finally:
        await ws.close()
        await pc.close()
        await session.close()
    return starts


def alsa_talk_row(tries: int = 5) -> None:
    """Talk latency to the server's own speaker (--talk alsa:DEVICE): an aiortc viewer's tone to the
    moment camtrack wrote it to the ALSA device (tests/alsa_devices.py: ALSA's file plugin, whose file
    tells when each sample was written)."""
    import os
    import tempfile

    import numpy as np

    from tests.alsa_devices import SPEAKER, AlsaDevices, SpeakerWatch

    with tempfile.TemporaryDirectory() as directory:
        devices = AlsaDevices(Path(directory))
        before = os.environ.get("ALSA_CONFIG_PATH")
        os.environ["ALSA_CONFIG_PATH"] = str(devices.config)  # (the server inherits it)
        try:
            server, port = start_server("--talk", f"alsa:{SPEAKER}", "--talk-token", "bench", "--audio", "off",
                                        "--width", "320", "--height", "240")
        finally:
            if before is None:
                del os.environ["ALSA_CONFIG_PATH"]
            else:
                os.environ["ALSA_CONFIG_PATH"] = before
        watch = SpeakerWatch(devices.speaker)
        try:
            starts = asyncio.run(alsa_talk_delays(f"ws://127.0.0.1:{port}/ws", tries))
            time.sleep(1.0)  # (the rest written at the device's close)
        finally:
            watch.stop()
            stop_server(server)
        samples = devices.speaker_samples()
    loud = np.abs(samples) > 0.1
    # each tone's first sample: loud after at least 0.5 s of quiet
    onsets, quiet = [], 24000
    for index in np.nonzero(loud)[0]:
        if index - quiet >= 24000:
            onsets.append(int(index))
        quiet = int(index)
    delays = sorted(written - start for start, written in
                    zip(starts, (watch.written_at(onset) for onset in onsets), strict=False)
                    if written is not None)
    if delays:
        print(f"talk latency, an aiortc viewer's microphone to the server's ALSA speaker (--talk alsa:DEVICE, "
              f"written to the device): {len(delays)} of {tries} heard, min {delays[0] * 1000:.0f} ms, median "
              f"{delays[len(delays) // 2] * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms")
    else:
        print(f"talk latency to the ALSA speaker: nothing written ({len(onsets)} onsets of {tries})")


def g711_rows(count: int, seconds: float) -> None:
    """A G.711 camera to `count` listeners: PCMU passed through, Opus from the one encoder, no sound."""
    port = free_port()
    camera = subprocess.Popen(["/usr/bin/python3", str(ROOT / "tests" / "gst_rtsp_audio_server.py"), str(port), "pcmu"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert camera.stdout is not None
        url = camera.stdout.readline().strip()
        if not url.startswith("rtsp://"):
            print(f"G.711: no GStreamer RTSP camera here ({url})")
            return
        print(f"\nA G.711 camera (GStreamer's RTSP server: H.264 320x240@15 passed through, PCMU 20 ms "
              f"packets), {count} listeners:\n")
        print("| --audio | listeners' offer | listeners | server CPU % | clients CPU % | audio fps min | "
              "video fps min | Opus encoders | frames encoded | frames passed | encode s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        source = ("--source", url, "--width", "320", "--height", "240")
        for audio, codecs, offer in (("off", None, "any"), ("auto", "audio/PCMU,audio/opus", "PCMU, Opus"),
                                     ("auto", "audio/opus", "Opus only")):
            r = row(audio, count, seconds, source, codecs)
            print(f"| {audio} | {offer} | {count} | {r['server_cpu']:.0f} | {r['client_cpu']:.0f} | "
                  f"{r['audio_fps_min']:.0f} | {r['video_fps_min']:.0f} | {r['encoders']:.0f} | "
                  f"{r['encoded']:.0f} | {r['passed']:.0f} | {r['encode_seconds']:.2f} |", flush=True)
    finally:
        camera.kill()
        camera.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--counts", default="1,16")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--codecs", help=argparse.SUPPRESS)
    parser.add_argument("--g711-listeners", type=int, default=16,
                        help="listeners of the G.711 camera's rows (0: no such rows)")
    parser.add_argument("--only-g711", action="store_true", help="only the G.711 camera's rows")
    args = parser.parse_args()
    if args.client:
        codecs = tuple(args.codecs.split(",")) if args.codecs else None
        print(json.dumps(asyncio.run(listen(args.client, args.count, args.seconds, codecs))))
        return
    if args.only_g711:
        g711_rows(args.g711_listeners, args.seconds)
        return
    lip_sync_row(min(args.seconds, 10.0))
    chromium_lip_sync_row()
    talk_row()
    alsa_talk_row()
    print("| --audio | listeners | server CPU % | clients CPU % | audio fps min | video fps min | Opus encoders "
          "| frames encoded | encode s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for count in (int(c) for c in args.counts.split(",")):
        for audio in ("off", "auto"):
            r = row(audio, count, args.seconds)
            print(f"| {r['audio']} | {r['listeners']} | {r['server_cpu']:.0f} | {r['client_cpu']:.0f} | "
                  f"{r['audio_fps_min']:.0f} | {r['video_fps_min']:.0f} | {r['encoders']:.0f} | "
                  f"{r['encoded']:.0f} | {r['encode_seconds']:.2f} |", flush=True)
    if args.g711_listeners:
        g711_rows(args.g711_listeners, args.seconds)


if __name__ == "__main__":
    main()
