"""A WebRTC viewer of camtrack written with GStreamer's webrtcbin: WHEP or the /ws signaling.

Run with Debian's python3 (where `gi` lives; Debian packages gstreamer1.0-plugins-bad,
gir1.2-gst-plugins-bad-1.0, gstreamer1.0-nice, gstreamer1.0-libav, python3-gi):

    /usr/bin/python3 tests/gst_whep_client.py --whep http://HOST:PORT/whep --frames 60
    /usr/bin/python3 tests/gst_whep_client.py --ws ws://HOST:PORT/ws --frames 60

It offers H.264 (constrained baseline, packetization-mode 1) and VP8 on one recvonly video
transceiver, waits for ICE gathering to complete (no trickle: the offer carries its candidates),
applies the answer, decodes what arrives (decodebin: avdec_h264 or vp8dec) and prints one JSON
line when it has decoded `--frames` pictures or `--timeout` ran out:
{"frames": N, "first_frame_s": S, "width": W, "height": H, "codec": "H264", "errors": [...]}.
Exit status 0 when enough pictures were decoded, 1 otherwise. `--local-address` adds the address
libnice gathers on (libnice never gathers on loopback nor on interfaces named veth*).

This is the recipe docs/watching.md describes (bookworm's GStreamer 1.22 has no whepsrc).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import struct
import sys
import threading
import time
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

OFFERED = ("application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,"
           "packetization-mode=(string)1,profile-level-id=(string)42e01f;"
           "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000")


class WebSocket:
    """Just enough of RFC 6455 for JSON text messages (client frames masked, no extensions)."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        origin = f"http://{parts.hostname}:{parts.port or 80}"
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"Origin: {origin}\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise OSError("the websocket handshake was cut")
            head += chunk
        status, _, self.buffer = head.partition(b"\r\n\r\n")
        line = status.split(b"\r\n")[0].decode(errors="replace")
        if " 101 " not in line:
            raise OSError(f"websocket refused: {line}")

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("the websocket closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def send(self, message: dict[str, object]) -> None:
        payload = json.dumps(message).encode()
        header = bytes([0x81])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        elif len(payload) < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def receive(self) -> dict[str, object]:
        """The next text message (pings answered, other frames skipped)."""
        while True:
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(length)
            opcode = first & 0x0F
            if opcode == 0x8:
                raise OSError("the server closed the websocket")
            if opcode == 0x9:  # ping: pong with the same payload
                mask = os.urandom(4)
                self.sock.sendall(bytes([0x8A, 0x80 | length]) + mask
                                  + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
            elif opcode == 0x1:
                return json.loads(payload)  # type: ignore[no-any-return]


class Viewer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = GLib.MainLoop()
        self.pipe = Gst.Pipeline.new("viewer")
        self.webrtc = Gst.ElementFactory.make("webrtcbin", "webrtc")
        self.webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        self.pipe.add(self.webrtc)
        self.frames = 0
        self.started = time.monotonic()
        self.first_frame: float | None = None
        self.size: tuple[int, int] | None = None
        self.codec: str | None = None
        self.errors: list[str] = []
        self.states: list[str] = []
        self.ws: WebSocket | None = None
        self.session: str | None = None  # the WHEP session's URL
        self.webrtc.connect("pad-added", self.on_pad)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering)
        self.webrtc.connect("notify::connection-state", self.on_connection_state)
        if args.local_address:
            gi.require_version("Nice", "0.1")
            from gi.repository import Nice  # noqa: F401 - before the agent is wrapped: its methods
        # kept for the viewer's life: GStreamer 1.22's "ice-agent" getter hands out a reference it
        # does not own, and dropping the Python wrapper destroys the agent under webrtcbin
        self.ice = self.webrtc.get_property("ice-agent")
        self.ice.set_property("ice-tcp", False)  # camtrack's ICE is UDP only
        if args.local_address:
            self.agent = self.ice.get_property("agent")
            for address in args.local_address:
                add_local_address(self.agent, address)
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message", self.on_message)

    # --- signaling -------------------------------------------------------------------------
    def start(self) -> None:
        self.pipe.set_state(Gst.State.PLAYING)
        if self.args.ws:
            self.ws = WebSocket(self.args.ws, self.args.timeout)
            hello = self.ws.receive()
            if hello.get("type") != "hello":
                self.fail(f"expected hello, got {hello}")
                return
        caps = Gst.Caps.from_string(OFFERED)
        self.webrtc.emit("add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY, caps)
        promise = Gst.Promise.new_with_change_func(self.on_offer, None)
        self.webrtc.emit("create-offer", None, promise)

    def on_offer(self, promise: Gst.Promise, _data: object) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())

    def on_gathering(self, element: Gst.Element, _spec: object) -> None:
        if element.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            sdp = element.get_property("local-description").sdp.as_text()
            if os.environ.get("GST_WHEP_DEBUG"):
                print(sdp, file=sys.stderr)
            threading.Thread(target=self.exchange, args=(sdp,), daemon=True).start()

    def exchange(self, offer: str) -> None:
        try:
            answer = self.post_whep(offer) if self.args.whep else self.post_ws(offer)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            GLib.idle_add(self.fail, f"signaling: {exc}")
            return
        GLib.idle_add(self.apply_answer, answer)

    def post_whep(self, offer: str) -> str:
        request = urllib.request.Request(self.args.whep, data=offer.encode(), method="POST",
                                         headers={"Content-Type": "application/sdp"})
        with urllib.request.urlopen(request, timeout=self.args.timeout) as response:
            if response.status != 201:
                raise OSError(f"WHEP answered {response.status}")
            self.session = urllib.parse.urljoin(self.args.whep, response.headers["Location"])
            return response.read().decode()

    def hang_up(self) -> None:
        """End the WHEP session (DELETE its resource) or the /ws one (bye, then close)."""
        try:
            if self.session is not None:
                request = urllib.request.Request(self.session, method="DELETE")
                urllib.request.urlopen(request, timeout=5).close()
            if self.ws is not None:
                self.ws.send({"type": "bye"})
                self.ws.sock.close()
        except OSError as exc:
            self.errors.append(f"hang-up: {exc}")

    def post_ws(self, offer: str) -> str:
        assert self.ws is not None
        self.ws.send({"type": "offer", "sdp": offer})
        while True:
            message = self.ws.receive()
            if message.get("type") == "answer":
                return str(message["sdp"])
            if message.get("type") in ("error", "bye"):
                raise OSError(f"the server said {message}")

    def apply_answer(self, text: str) -> bool:
        self.answer_sdp = text
        _, sdp = GstSdp.SDPMessage.new_from_text(text)
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
        self.webrtc.emit("set-remote-description", answer, Gst.Promise.new())
        return False

    # --- media -----------------------------------------------------------------------------
    def on_pad(self, _element: Gst.Element, pad: Gst.Pad) -> None:
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        caps = pad.get_current_caps() or pad.query_caps(None)
        self.codec = caps.get_structure(0).get_string("encoding-name")
        decode = Gst.ElementFactory.make("decodebin")
        convert = Gst.ElementFactory.make("videoconvert")
        sink = Gst.ElementFactory.make("fakesink")
        sink.set_property("signal-handoffs", True)
        sink.set_property("sync", False)
        sink.connect("handoff", self.on_frame)
        for element in (decode, convert, sink):
            self.pipe.add(element)
        convert.link(sink)
        decode.connect("pad-added", lambda _d, p: p.link(convert.get_static_pad("sink")))
        for element in (decode, convert, sink):
            element.sync_state_with_parent()
        pad.link(decode.get_static_pad("sink"))

    def on_frame(self, _sink: Gst.Element, _buffer: Gst.Buffer, pad: Gst.Pad) -> None:
        self.frames += 1
        if self.first_frame is None:
            self.first_frame = time.monotonic() - self.started
            structure = pad.get_current_caps().get_structure(0)
            self.size = (structure.get_int("width")[1], structure.get_int("height")[1])
        if self.frames >= self.args.frames:
            GLib.idle_add(self.loop.quit)

    # --- reporting -------------------------------------------------------------------------
    def on_connection_state(self, element: Gst.Element, _spec: object) -> None:
        state = element.get_property("connection-state").value_nick
        self.states.append(state)
        if state == "failed":  # ICE or DTLS failed: no picture will come
            GLib.idle_add(self.fail, "the connection failed")

    def on_message(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        if message.type == Gst.MessageType.ERROR:
            error, debug = message.parse_error()
            self.errors.append(f"{error.message} ({debug})")
        elif message.type == Gst.MessageType.WARNING:
            warning, debug = message.parse_warning()
            self.errors.append(f"warning: {warning.message} ({debug})")

    def fail(self, reason: str) -> bool:
        self.errors.append(reason)
        self.loop.quit()
        return False

    def run(self) -> int:
        GLib.timeout_add(int(self.args.timeout * 1000), self.loop.quit)
        GLib.idle_add(self.start_once)
        self.loop.run()
        self.pipe.set_state(Gst.State.NULL)
        self.hang_up()
        print(json.dumps({
            "frames": self.frames, "first_frame_s": self.first_frame,
            "width": self.size[0] if self.size else None, "height": self.size[1] if self.size else None,
            "codec": self.codec, "states": self.states, "errors": self.errors,
            "answer_setup": [line.strip() for line in getattr(self, "answer_sdp", "").splitlines()
                             if line.startswith("a=setup:")],
        }), flush=True)
        return 0 if self.frames >= self.args.frames else 1

    def start_once(self) -> bool:
        try:
            self.start()
        except Exception as exc:  # noqa: BLE001 - reported
            self.fail(f"start: {exc}")
        return False


def add_local_address(agent: object, address: str) -> None:
    """Make libnice gather on `address` (and only on the addresses so added): needs Debian's
    gir1.2-nice-0.1."""
    from gi.repository import Nice

    nice_address = Nice.Address()
    if not nice_address.set_from_string(address):
        raise SystemExit(f"not an IP address: {address}")
    agent.add_local_address(nice_address)  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--whep", help="the WHEP endpoint URL (POST the offer there)")
    target.add_argument("--ws", help="camtrack's /ws signaling URL")
    parser.add_argument("--frames", type=int, default=60, help="decoded pictures to wait for")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before giving up")
    parser.add_argument("--local-address", action="append", default=[],
                        help="gather ICE candidates on this address only (repeatable; e.g. 127.0.0.1)")
    args = parser.parse_args()
    Gst.init(None)
    return Viewer(args).run()


if __name__ == "__main__":
    sys.exit(main())
