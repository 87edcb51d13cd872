"""The child process that holds an ALSA device for camtrack.sources.alsa: FFmpeg opens, drains and
closes ALSA devices in blocking calls that hold Python's GIL (a busy or stuck device would freeze the
whole server, event loop included), so they run here, in a process of their own the server can kill.

Run as a script, by path and with -P (`python -P .../alsa_io.py play|record DEVICE SERVER_PID`, the
server's pid: it exits when that is no longer its parent): it imports PyAV and nothing of camtrack
(whose package would take seconds to import). On stdout, first one line:
`ok ...` once the device is open (`record`: `ok RATE CHANNELS FORMAT CODEC`), or `error: WHY`.
- play: raw 16-bit 48 kHz mono PCM on stdin, played as it comes; at the end of stdin the device is
  drained (what it holds is played) and closed.
- record: the device's raw PCM (asked for 48 kHz mono; a device that refuses mono in two channels)
  on stdout after that line, as FFmpeg reads it, until stdout is closed.
"""

from __future__ import annotations

import fractions
import os
import sys
from typing import Any

import av

RATE = 48000
#: bytes of 20 ms of 16-bit mono at RATE: what play encodes at a time
PIECE = RATE // 50 * 2


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def play(device: str) -> int:
    import numpy as np

    try:
        container: Any = av.open(device, mode="w", format="alsa")
        stream = container.add_stream("pcm_s16le", rate=RATE, layout="mono")
        container.start_encoding()
    except av.FFmpegError:
        _say("error: no such device, or another program holds it (`aplay -L` lists the devices)")
        return 1
    _say("ok")
    pts, pending = 0, b""
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        pending += data
        usable = len(pending) // 2 * 2
        if not usable:
            continue
        frame = av.AudioFrame.from_ndarray(np.frombuffer(pending[:usable], "<i2")[None, :], format="s16",
                                           layout="mono")
        pending = pending[usable:]
        frame.sample_rate, frame.pts, frame.time_base = RATE, pts, fractions.Fraction(1, RATE)
        pts += frame.samples
        for packet in stream.encode(frame):
            container.mux(packet)
    container.close()  # (drains: plays what the device holds)
    return 0


def record(device: str) -> int:
    container: Any = None
    for channels in (1, 2):  # a device that takes two channels only (hw:): mixed down by the server
        try:
            container = av.open(device, format="alsa", options={"sample_rate": str(RATE), "channels": str(channels)})
            break
        except av.FFmpegError:
            continue
    if container is None:
        # FFmpeg says EIO whatever ALSA said
        _say("error: no such device, or another program holds it (`arecord -L` lists the devices)")
        return 1
    stream = container.streams.audio[0]
    context = stream.codec_context
    _say(f"ok {context.sample_rate or RATE} {context.layout.nb_channels} {context.format.name} {context.name}")
    # FFmpeg reads one ALSA period a packet, a few samples on some devices: written out 5 ms at a time
    # (the server stamps the sound by when its newest sample came: what waited here is accounted for)
    batch = max(1, (context.sample_rate or RATE) // 200) * context.format.bytes * context.layout.nb_channels
    pending = bytearray()
    try:
        for packet in container.demux(stream):
            pending += bytes(packet)
            if len(pending) >= batch:
                os.write(1, pending)
                pending.clear()
    except BrokenPipeError:
        pass  # (the server closed its end: it no longer listens)
    return 0


def _die_with_the_server(server: int) -> None:
    """Killed when the thread of the server (pid `server`) that started this process ends (the server
    dies, even by SIGKILL): a child stuck in ALSA's open would otherwise stay for as long as the device
    is stuck. A server that died before that was set (while this process started) is no longer its
    parent: then it exits at once. (Its parent is then not always pid 1: a subreaper, such as systemd
    for a user service or a container's init, takes the orphan.)"""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != server:  # (it died already)
        sys.exit(1)


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[1] not in ("play", "record") or not argv[3].isdigit():
        print("usage: alsa_io.py play|record DEVICE SERVER_PID", file=sys.stderr)
        return 2
    _die_with_the_server(int(argv[3]))
    return play(argv[2]) if argv[1] == "play" else record(argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
