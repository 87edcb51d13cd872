"""A minimal RTSP server for the tests, on loopback: one H.264 track over RTP interleaved in the
RTSP connection (TCP), packetized with aiortc's RTP packetizer, paced in real time and looped.

Not a real camera server (no UDP, no auth, one session per connection): just enough of RFC 2326 for
FFmpeg's RTSP client, until the test machines have one (GStreamer's gst-rtsp-server is not
installed here). The parameter sets can be sent only in the SDP, as many cameras do.
"""

from __future__ import annotations

import asyncio
import base64
import fractions
import re
import struct
from dataclasses import dataclass

import av
from aiortc.codecs.h264 import H264Encoder

from camtrack.media.frame import VIDEO_TIME_BASE
from camtrack.sources.h264 import NAL_PPS, NAL_SPS, annexb, nal_type, split_annexb


@dataclass(frozen=True)
class AccessUnit:
    data: bytes  # Annex-B
    pts: int  # 90 kHz
    keyframe: bool


class RtspServer:
    def __init__(self, units: list[AccessUnit], sps: bytes, pps: bytes, fps: float, *,
                 in_band_parameter_sets: bool = True) -> None:
        self.units = units
        self.sps, self.pps, self.fps = sps, pps, fps
        self.in_band = in_band_parameter_sets
        self.port = 0
        self.sessions = 0
        #: every request's method, in order (a client's keep-alives among them)
        self.methods: list[str] = []
        #: the session timeout SETUP announces (a client keeps the session alive within it)
        self.session_timeout = 60
        self.down = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def go_down(self) -> None:
        """Drop every connection and refuse new ones (a camera switched off) until `come_back()`."""
        self.down = True
        self.drop_connections()

    def come_back(self) -> None:
        self.down = False

    def drop_connections(self) -> None:
        """Cut every connection (a camera rebooting, a network fault)."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def stop(self) -> None:
        self.drop_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def sdp(self) -> str:
        sets = ",".join(base64.b64encode(n).decode() for n in (self.sps, self.pps))
        return (
            "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=camtrack test\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
            "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
            f"a=fmtp:96 packetization-mode=1;profile-level-id={self.sps[1:4].hex()};sprop-parameter-sets={sets}\r\n"
            "a=control:track0\r\n"
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        self._writers.add(writer)
        sender: asyncio.Task[None] | None = None
        try:
            while True:
                first = await reader.readexactly(1)
                if first == b"$":  # the client's RTCP, interleaved: skip it
                    header = await reader.readexactly(3)
                    await reader.readexactly(struct.unpack("!H", header[1:])[0])
                    continue
                head = first + await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, url = lines[0].split(" ")[:2]
                self.methods.append(method)
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                if int(headers.get("content-length", "0")):
                    await reader.readexactly(int(headers["content-length"]))
                reply = [f"CSeq: {headers.get('cseq', '0')}"]
                body = b""
                if method == "OPTIONS":
                    reply.append("Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER")
                elif method == "DESCRIBE":
                    body = self.sdp().encode()
                    reply += ["Content-Type: application/sdp", f"Content-Base: {url.rstrip('/')}/"]
                elif method == "SETUP":
                    if "interleaved" not in headers.get("transport", ""):
                        writer.write(f"RTSP/1.0 461 Unsupported Transport\r\n{reply[0]}\r\n\r\n".encode())
                        continue
                    channels = re.search(r"interleaved=(\d+-\d+)", headers["transport"])
                    reply += [f"Transport: RTP/AVP/TCP;unicast;interleaved={channels.group(1) if channels else '0-1'}",
                              f"Session: 4242;timeout={self.session_timeout}"]
                elif method == "PLAY":
                    reply.append("Session: 4242")
                elif method == "TEARDOWN":
                    reply.append("Session: 4242")
                if body:
                    reply.append(f"Content-Length: {len(body)}")
                writer.write(("RTSP/1.0 200 OK\r\n" + "\r\n".join(reply) + "\r\n\r\n").encode() + body)
                if method == "PLAY" and sender is None:
                    self.sessions += 1
                    sender = asyncio.ensure_future(self._send(writer))
                if method == "TEARDOWN":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            if sender is not None:
                sender.cancel()
            self._writers.discard(writer)
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter) -> None:
        packer = H264Encoder()
        loop = asyncio.get_running_loop()
        began = loop.time()
        seq, ssrc, frame = 0, 0x1234ABCD, 0
        span = self.units[-1].pts - self.units[0].pts + round(90000 / self.fps)
        while not writer.is_closing():
            for unit in self.units:
                data = unit.data
                if not self.in_band:
                    data = annexb([n for n in split_annexb(data) if nal_type(n) not in (NAL_SPS, NAL_PPS)])
                seq = send_unit(writer, packer, data, unit.pts + span * (frame // len(self.units)), seq, ssrc)
                frame += 1
                await writer.drain()
                delay = began + frame / self.fps - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)


def send_unit(writer: asyncio.StreamWriter, packer: H264Encoder, data: bytes, pts: int, seq: int, ssrc: int) -> int:
    """One access unit as RTP interleaved in the RTSP connection (channel 0); the next sequence number."""
    packet = av.Packet(data)
    packet.pts, packet.time_base = pts, VIDEO_TIME_BASE
    payloads, timestamp = packer.pack(packet)
    for i, payload in enumerate(payloads):
        marker = 0x80 if i == len(payloads) - 1 else 0
        rtp = struct.pack("!BBHII", 0x80, marker | 96, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + payload
        writer.write(b"$\x00" + struct.pack("!H", len(rtp)) + rtp)
        seq += 1
    return seq


class LiveRtspServer(RtspServer):
    """The test pattern encoded as it is served (like a camera: each picture carries the latency
    stamp of the moment it was made), H.264 Main without B-frames, a keyframe every `gop` frames."""

    def __init__(self, width: int = 640, height: int = 480, fps: float = 30.0, gop: int = 120,
                 bitrate: int = 1_000_000) -> None:
        from camtrack.sources.pattern import PatternSource

        self.width, self.height, self.gop, self.bitrate, self.fps = width, height, gop, bitrate, fps
        self.pattern = PatternSource(width, height, 1000)  # paced by the sender, not by itself
        self.pattern.open()
        encoder = self._encoder()
        first = self._encode(encoder, 0)
        sps = next(n for n in split_annexb(first) if nal_type(n) == NAL_SPS)
        pps = next(n for n in split_annexb(first) if nal_type(n) == NAL_PPS)
        super().__init__([], sps, pps, fps)

    def _encoder(self) -> av.VideoCodecContext:
        codec = av.CodecContext.create("libx264", "w")
        assert isinstance(codec, av.VideoCodecContext)
        codec.width, codec.height, codec.pix_fmt = self.width, self.height, "yuv420p"
        codec.time_base = VIDEO_TIME_BASE
        codec.framerate = fractions.Fraction(round(self.fps * 1000), 1000)
        codec.bit_rate = self.bitrate
        codec.gop_size = self.gop
        codec.max_b_frames = 0
        codec.options = {"profile": "main", "preset": "veryfast", "tune": "zerolatency", "bf": "0",
                         "g": str(self.gop), "keyint_min": str(self.gop), "sc_threshold": "0"}
        return codec

    def _encode(self, codec: av.VideoCodecContext, pts: int) -> bytes:
        frame = av.VideoFrame.from_ndarray(self.pattern.read(), format="bgr24")
        frame.pts = pts
        return b"".join(bytes(p) for p in codec.encode(frame))

    async def _send(self, writer: asyncio.StreamWriter) -> None:
        packer = H264Encoder()
        codec = self._encoder()
        loop = asyncio.get_running_loop()
        began = loop.time()
        seq, ssrc, frame = 0, 0x1234ABCD, 0
        while not writer.is_closing():
            pts = round(frame * 90000 / self.fps)
            data = self._encode(codec, pts)
            if data:
                seq = send_unit(writer, packer, data, pts, seq, ssrc)
                await writer.drain()
            frame += 1
            delay = began + frame / self.fps - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)


class ClipRtspServer(RtspServer):
    """LiveRtspServer's pictures encoded once (two GOPs) and looped: for sizes this machine cannot
    encode live beside the server it feeds. Their latency stamps are those of the encoding."""

    def __init__(self, width: int, height: int, fps: float = 30.0, gop: int = 120, bitrate: int = 4_000_000) -> None:
        live = LiveRtspServer(width, height, fps, gop, bitrate)
        codec = live._encoder()
        units = []
        for frame in range(2 * gop):
            pts = round(frame * 90000 / fps)
            units.append(AccessUnit(live._encode(codec, pts), pts, frame % gop == 0))
        super().__init__(units, live.sps, live.pps, fps)


async def _serve_live() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="an RTSP camera of the test pattern on loopback")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--bitrate", type=int, default=1_000_000)
    parser.add_argument("--clip", action="store_true", help="encode two GOPs once and loop them")
    parser.add_argument("--gop", type=int, default=120, help="frames from one keyframe to the next")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    server: RtspServer = (ClipRtspServer(width, height, gop=args.gop, bitrate=args.bitrate) if args.clip
                          else LiveRtspServer(width, height, gop=args.gop, bitrate=args.bitrate))
    print(await server.start(), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":  # `python -m tests.rtsp_server`: a live RTSP camera on loopback (bench/)
    asyncio.run(_serve_live())
