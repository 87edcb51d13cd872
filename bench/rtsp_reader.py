"""Throughput of camtrack's own RTSP reader, and what it leaves to the process's other threads.

    python -m bench.rtsp_reader [--megabytes N]

A loopback RTSP server (a thread, plain sockets) answers the session's requests, then sends a
prepared stream as fast as the reader takes it and hangs up. Streams: `video` (access units of
1400-byte RTP packets, marker on the last), `tiny` (RTP packets of one payload byte on the video
channel) and `rtcp` (the same on the RTCP channel). The flood guard is turned off for the
measurement (it would cut `tiny` and `rtcp` after 20 000 packets). Meanwhile another thread of the
process asks for 1 ms sleeps: how late it wakes says how long the reader holds the GIL and the core.
"""

from __future__ import annotations

import argparse
import base64
import socket
import statistics
import struct
import threading
import time

from camtrack.sources import rtsp

SPS = bytes.fromhex("674d4014da0507e840000003004000000f23c50aa8")  # 320x240, Main (libx264)
PPS = bytes.fromhex("68ef3c80")


def stream(kind: str, megabytes: float) -> bytes:
    total = int(megabytes * 1e6)
    parts, size, seq, ts = [], 0, 0, 0
    if kind == "video":
        while size < total:
            for i in range(50):
                if seq == 0 or i == 0 and seq % 1500 == 0:
                    nal = b"\x65" + bytes(1399)  # an IDR in one packet, then P slices
                else:
                    nal = b"\x41" + bytes(1399)
                marker = 0x80 if i == 49 else 0
                rtp = struct.pack("!BBHII", 0x80, marker | 96, seq & 0xFFFF, ts, 1) + nal
                parts.append(b"$\x00" + struct.pack("!H", len(rtp)) + rtp)
                seq += 1
                size += len(rtp) + 4
            ts += 3000
    else:
        channel = b"\x00" if kind == "tiny" else b"\x01"
        chunk = b"".join(b"$" + channel + b"\x00\x0d" + struct.pack("!BBHII", 0x80, 96, s, 1234, 1) + b"\x00"
                         for s in range(65536))
        parts = [chunk] * max(1, round(total / len(chunk)))
        # an IDR first on the video channel, so that the reader opens (it needs one picture)
    idr = struct.pack("!BBHII", 0x80, 0x80 | 96, 65535, 0, 1) + b"\x65" + bytes(99)
    return b"$\x00" + struct.pack("!H", len(idr)) + idr + b"".join(parts)


def serve(listener: socket.socket, data: bytes) -> None:
    conn, _ = listener.accept()
    with conn:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                buffer += conn.recv(4096)
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method = lines[0].split(" ")[0]
            cseq = next(line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("cseq"))
            extra, body = "", b""
            if method == "DESCRIBE":
                sets = ",".join(base64.b64encode(n).decode() for n in (SPS, PPS))
                body = (f"v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
                        f"a=fmtp:96 packetization-mode=1;sprop-parameter-sets={sets}\r\n").encode()
                extra = f"Content-Length: {len(body)}\r\n"
            elif method == "SETUP":
                extra = "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 1\r\n"
            conn.sendall(f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n{extra}\r\n".encode() + body)
            if method == "PLAY":
                try:
                    conn.sendall(data)
                except OSError:
                    pass
                return


def measure(kind: str, megabytes: float) -> None:
    data = stream(kind, megabytes)
    packets = data.count(b"$\x00") if kind == "video" else len(data) // 17
    listener = socket.create_server(("127.0.0.1", 0))
    server = threading.Thread(target=serve, args=(listener, data), daemon=True)
    server.start()
    source = rtsp.RtspSource(f"rtsp://127.0.0.1:{listener.getsockname()[1]}/cam")
    lateness: list[float] = []
    done = threading.Event()

    def ticker() -> None:
        while not done.is_set():
            asked = time.perf_counter()
            time.sleep(0.001)
            lateness.append(time.perf_counter() - asked - 0.001)

    source.open()
    tick = threading.Thread(target=ticker, daemon=True)
    tick.start()
    wall, cpu = time.perf_counter(), time.thread_time()
    pictures = 0
    while source.read() is not None:
        pictures += 1
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    done.set()
    tick.join()
    source.close()
    listener.close()
    late = sorted(lateness)
    print(f"{kind:5}: {len(data) / 1e6:6.1f} MB, {packets:8d} packets in {wall:5.2f} s wall, {cpu:5.2f} s CPU: "
          f"{packets / cpu / 1e3:6.0f} k packets / CPU s, {len(data) / cpu / 1e6:6.0f} MB / CPU s, "
          f"{packets / wall / 1e3:6.0f} k packets/s; {pictures} pictures; another thread's 1 ms sleep late by "
          f"p50 {statistics.median(late) * 1e3:.2f} ms, p99 {late[int(0.99 * len(late))] * 1e3:.2f} ms, "
          f"max {late[-1] * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=float, default=30.0)
    args = parser.parse_args()
    for name in ("MAX_FRAMES_PER_SECOND", "TINY_FRAMES"):
        setattr(rtsp, name, 1 << 60)  # the guard off: this measures the parsing (absent before the guard: no-op)
    for kind in ("video", "tiny", "rtcp"):
        measure(kind, args.megabytes)


if __name__ == "__main__":
    main()
