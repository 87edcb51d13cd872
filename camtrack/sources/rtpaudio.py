"""A camera's sound out of RTP, as camtrack's own RTSP reader receives it beside the picture (one
session for both: `camtrack.sources.rtsp.RtspSession`).

- The audio track of an SDP description (`parse_audio`): AAC as `mpeg4-generic` (RFC 3640, AU
  headers) or `MP4A-LATM` (RFC 6416, `cpresent=0`), G.711 µ-law and A-law (PCMU, PCMA: static
  payload types 0 and 8, or named), and Opus (RFC 7587).
- Depacketizers (`AudioDepacketizer`): RTP packets in, access units (AUs) out with their RTP
  timestamp. A camera is not trusted: an AU larger than MAX_AU, an AU header that points past its
  packet, more than MAX_AUS_PER_PACKET AUs in a packet, a fragment that never ends, are dropped and
  counted (`bad`), never buffered without a bound.
- RTCP sender reports (`sender_reports`): the camera's NTP time of an RTP time, per track, which
  puts the sound on the picture's timeline (`TrackClock`, `Timeline`).
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Callable
from dataclasses import dataclass

#: an audio access unit may be at most this large: AAC's largest frame is 6 144 bits a channel (768
#: bytes), 8 channels 6 KiB; an Opus packet at most 1 275 bytes a frame, 120 ms of them a few KiB
MAX_AU = 8 * 1024
#: an AAC AU: 6 144 bits a channel, 8 channels (ISO 14496-3 4.5.3.2)
MAX_AAC_AU = 6144
#: AUs one RTP packet may carry (a 1 400-byte packet of the smallest AAC frames holds a few dozen)
MAX_AUS_PER_PACKET = 64
#: what an SDP may declare (beyond them the description lies: the track is not read)
MAX_CLOCK_RATE = 192_000
MAX_CHANNELS = 8
MAX_CONFIG = 64

CODECS = {"MPEG4-GENERIC": "aac", "MP4A-LATM": "latm", "PCMU": "pcmu", "PCMA": "pcma", "OPUS": "opus"}
STATIC = {0: ("pcmu", 8000), 8: ("pcma", 8000)}


class AudioUnsupported(ValueError):
    """An audio track camtrack's reader does not read (another codec, a description that lies)."""


@dataclass
class AudioTrack:
    """The audio of a DESCRIBE answer that camtrack's reader depacketizes."""

    control: str
    payload_type: int
    #: "aac", "latm", "pcmu", "pcma" or "opus"
    codec: str
    clock_rate: int
    channels: int = 1
    #: AAC's AudioSpecificConfig (what the decoder needs first)
    config: bytes = b""
    size_length: int = 0
    index_length: int = 0
    index_delta_length: int = 0


def parse_audio(sections: list[list[str]], resolve: Callable[[str], str]) -> AudioTrack | None:
    """The first audio track of an SDP's media sections that camtrack reads, or None when there is
    no audio; AudioUnsupported (with the reason) when there is audio, but none that it reads."""
    reasons: list[str] = []
    for section in sections:
        media = section[0][2:].split()
        if not media or media[0] != "audio" or len(media) < 4:
            continue
        rtpmap: dict[str, tuple[str, int, int]] = {}
        fmtp: dict[str, str] = {}
        control = ""
        for line in section[1:]:
            if line.startswith("a=rtpmap:"):
                pt, _, what = line[len("a=rtpmap:"):].partition(" ")
                parts = what.strip().split("/")
                rate = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
                channels = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 1
                rtpmap[pt.strip()] = (parts[0].upper(), rate, channels)
            elif line.startswith("a=fmtp:"):
                pt, _, params = line[len("a=fmtp:"):].partition(" ")
                fmtp[pt.strip()] = params
            elif line.startswith("a=control:"):
                control = line[len("a=control:"):].strip()
        for pt in media[3:]:
            if not pt.isdigit() or int(pt) > 127:
                continue
            if pt in rtpmap:
                name, rate, channels = rtpmap[pt]
                codec = CODECS.get(name, "")
            elif int(pt) in STATIC:
                (codec, rate), name, channels = STATIC[int(pt)], f"payload type {pt}", 1
            else:
                continue
            if not codec:
                reasons.append(name)
                continue
            try:
                track = _track(codec, int(pt), rate, channels, _params(fmtp.get(pt, "")), resolve(control))
            except AudioUnsupported as exc:
                reasons.append(str(exc))
                continue
            return track
        if not reasons:
            reasons.append("unnamed")
    if reasons:
        raise AudioUnsupported(f"the camera's sound is {', '.join(reasons)}")
    return None


def _params(text: str) -> dict[str, str]:
    params = {}
    for param in text.split(";"):
        key, _, value = param.strip().partition("=")
        if key:
            params[key.strip().lower()] = value.strip()
    return params


def _hex(value: str) -> bytes:
    if len(value) > 2 * MAX_CONFIG:
        raise AudioUnsupported("AAC with a config longer than any")
    try:
        return binascii.unhexlify(value)
    except (binascii.Error, ValueError):
        raise AudioUnsupported("AAC with an unreadable config") from None


def _track(codec: str, pt: int, rate: int, channels: int, params: dict[str, str], control: str) -> AudioTrack:
    if codec in ("pcmu", "pcma") and rate == 0:
        rate = 8000
    if not 1000 <= rate <= MAX_CLOCK_RATE or not 1 <= channels <= MAX_CHANNELS:
        raise AudioUnsupported(f"{codec} at {rate} Hz, {channels} channels (no camera's)")
    track = AudioTrack(control, pt, codec, rate, channels)
    if codec == "aac":
        if params.get("mode", "").lower() not in ("aac-hbr", "aac-lbr"):
            raise AudioUnsupported(f"mpeg4-generic in mode {params.get('mode', '(none)')[:20]!r}")
        track.config = _hex(params.get("config", ""))
        lengths = [params.get(k, "0") for k in ("sizelength", "indexlength", "indexdeltalength")]
        if not all(v.isdigit() for v in lengths):
            raise AudioUnsupported("AAC with unreadable AU header lengths")
        track.size_length, track.index_length, track.index_delta_length = (int(v) for v in lengths)
        if not 1 <= track.size_length <= 16 or track.index_length > 8 or track.index_delta_length > 8:
            raise AudioUnsupported("AAC with AU header lengths no camera uses")
        if not track.config:
            raise AudioUnsupported("AAC without a config")
    elif codec == "latm":
        if params.get("cpresent", "1") != "0":
            raise AudioUnsupported("MP4A-LATM with its configuration in band (cpresent=1)")
        track.config = latm_audio_specific_config(_hex(params.get("config", "")))
    return track


def latm_audio_specific_config(mux_config: bytes) -> bytes:
    """The AudioSpecificConfig inside a LATM StreamMuxConfig (audioMuxVersion 0: it starts at bit
    15), as the bytes a decoder takes (what follows it is ignored by the decoder)."""
    if len(mux_config) < 3 or mux_config[0] & 0x80:
        raise AudioUnsupported("MP4A-LATM with a StreamMuxConfig camtrack does not read")
    bits = int.from_bytes(mux_config, "big")
    total = 8 * len(mux_config)
    rest = total - 15
    value = bits & ((1 << rest) - 1)
    pad = (-rest) % 8
    return (value << pad).to_bytes((rest + pad) // 8, "big")


# -- RTP


def rtp_payload(packet: bytes) -> tuple[int, int, int, bool, bytes] | None:
    """(payload type, sequence number, timestamp, marker, payload) of an RTP packet, or None."""
    if len(packet) < 12 or packet[0] >> 6 != 2:
        return None
    offset = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        if len(packet) < offset + 4:
            return None
        offset += 4 + 4 * int.from_bytes(packet[offset + 2:offset + 4], "big")
    end = len(packet)
    if packet[0] & 0x20 and end > offset:
        end -= packet[-1]
    if end < offset:
        return None
    return (packet[1] & 0x7F, int.from_bytes(packet[2:4], "big"), int.from_bytes(packet[4:8], "big"),
            bool(packet[1] & 0x80), packet[offset:end])


class AudioDepacketizer:
    """Access units of one audio track out of its RTP packets: `push(packet)` gives the (RTP
    timestamp, AUs) the packet completed. `bad` counts what was dropped as broken, `foreign` the
    packets of another payload type (a description that lies about its payload type)."""

    def __init__(self, track: AudioTrack) -> None:
        self.track = track
        self.bad = 0
        self.foreign = 0
        self.packets = 0
        self._seq: int | None = None
        #: a fragmented AU (AAC) or LATM payload being put together: its timestamp and bytes
        self._fragment: bytearray | None = None
        self._fragment_ts = 0
        self._fragment_size = 0

    def push(self, packet: bytes) -> list[tuple[int, list[bytes]]]:
        parsed = rtp_payload(packet)
        if parsed is None:
            self.bad += 1
            return []
        pt, seq, timestamp, marker, payload = parsed
        if pt != self.track.payload_type:
            self.foreign += 1
            return []
        self.packets += 1
        if self._seq is not None and seq != (self._seq + 1) & 0xFFFF:
            if ((seq - self._seq) & 0xFFFF) > 0x8000:
                return []  # a duplicate or late packet
            self._fragment = None  # a piece of what is being put together was lost
        self._seq = seq
        if not payload:
            return []
        codec = self.track.codec
        if codec == "aac":
            aus = self._aac(payload, timestamp)
        elif codec == "latm":
            aus = self._latm(payload, timestamp, marker)
        else:
            if len(payload) > MAX_AU:  # (Opus: no packet is that large; G.711: over a second of sound,
                self.bad += 1          # which would go to viewers as one oversized RTP packet)
                return []
            aus = [payload]  # G.711: the samples; Opus: one packet
        return [(timestamp, aus)] if aus else []

    def _aac(self, payload: bytes, timestamp: int) -> list[bytes]:
        """RFC 3640 3.2: AU-headers-length (bits), the AU headers, then the AUs (or one fragment)."""
        track = self.track
        if len(payload) < 2:
            self.bad += 1
            return []
        header_bits = int.from_bytes(payload[:2], "big")
        header_bytes = (header_bits + 7) // 8
        if 2 + header_bytes > len(payload):
            self.bad += 1
            return []
        bits = int.from_bytes(payload[2:2 + header_bytes], "big") if header_bytes else 0
        used, sizes = 0, list[int]()
        first = True
        while used < header_bits:
            width = track.size_length + (track.index_length if first else track.index_delta_length)
            if used + width > header_bits or len(sizes) >= MAX_AUS_PER_PACKET:
                self.bad += 1
                return []
            shift = 8 * header_bytes - used - track.size_length
            sizes.append((bits >> shift) & ((1 << track.size_length) - 1))
            used += width
            first = False
        data = memoryview(payload)[2 + header_bytes:]
        if not sizes:
            self.bad += 1
            return []
        if len(sizes) == 1 and sizes[0] > len(data):
            return self._aac_fragment(sizes[0], bytes(data), timestamp)
        self._fragment = None
        aus, pos = list[bytes](), 0
        for size in sizes:
            if size > MAX_AAC_AU or pos + size > len(data):
                self.bad += 1
                break  # an AU header that points past the packet: the rest is garbage
            if size:
                aus.append(bytes(data[pos:pos + size]))
            pos += size
        return aus

    def _aac_fragment(self, size: int, data: bytes, timestamp: int) -> list[bytes]:
        """One AU larger than its packet (RFC 3640 3.2.3): its pieces share a timestamp and each
        carries the whole AU's size."""
        if size > MAX_AAC_AU:
            self.bad += 1
            self._fragment = None
            return []
        if self._fragment is None or self._fragment_ts != timestamp or self._fragment_size != size:
            self._fragment, self._fragment_ts, self._fragment_size = bytearray(), timestamp, size
        self._fragment += data
        if len(self._fragment) < size:
            return []
        au, self._fragment = bytes(self._fragment[:size]), None
        return [au]

    def _latm(self, payload: bytes, timestamp: int, marker: bool) -> list[bytes]:
        """RFC 6416: PayloadMux elements (each a PayloadLengthInfo, 255s then the rest, and the
        AU), possibly in pieces over packets of one timestamp, the last with the marker bit."""
        if self._fragment is not None and self._fragment_ts != timestamp:
            self._fragment = None
        if self._fragment is None:
            self._fragment, self._fragment_ts = bytearray(), timestamp
        if len(self._fragment) + len(payload) > MAX_AU * 2:
            self.bad += 1
            self._fragment = None
            return []
        self._fragment += payload
        if not marker:
            return []
        data, self._fragment = self._fragment, None
        aus, pos = list[bytes](), 0
        while pos < len(data) and len(aus) < MAX_AUS_PER_PACKET:
            size = 0
            while pos < len(data):
                byte = data[pos]
                pos += 1
                size += byte
                if byte != 255:
                    break
            if size == 0 or size > MAX_AAC_AU or pos + size > len(data):
                self.bad += 1
                break
            aus.append(bytes(data[pos:pos + size]))
            pos += size
        return aus


def opus_samples(packet: bytes) -> int:
    """Samples (at 48 kHz) an Opus packet lasts, from its TOC byte (RFC 6716 3.1); 960 if unreadable."""
    if not packet:
        return 960
    config, code = packet[0] >> 3, packet[0] & 0x03
    if config < 12:
        per = (480, 960, 1920, 2880)[config & 3]
    elif config < 16:
        per = (480, 960)[config & 1]
    else:
        per = (120, 240, 480, 960)[config & 3]
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        count = packet[1] & 0x3F if len(packet) > 1 else 1
    samples = per * count
    return samples if 0 < samples <= 5760 else 960


# -- RTCP and time


NTP_EPOCH = 2208988800


def sender_reports(packet: bytes) -> list[tuple[int, float, int]]:
    """(SSRC, NTP time as Unix seconds, RTP time) of each sender report in a compound RTCP packet."""
    reports: list[tuple[int, float, int]] = []
    pos = 0
    while pos + 4 <= len(packet) and len(reports) < 16:
        if packet[pos] >> 6 != 2:
            break
        length = 4 * (int.from_bytes(packet[pos + 2:pos + 4], "big") + 1)
        if packet[pos + 1] == 200 and length >= 28 and pos + 28 <= len(packet):
            ssrc, seconds, fraction, rtp = struct.unpack_from("!IIII", packet, pos + 4)
            reports.append((ssrc, seconds - NTP_EPOCH + fraction / 2**32, rtp))
        pos += length
    return reports


class TrackClock:
    """One track's RTP clock: timestamps unwrapped, and its newest sender report (the camera's NTP
    time of an RTP time), if the camera sends them."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._last: int | None = None
        self._extended = 0
        self._report: tuple[float, int] | None = None

    def extend(self, timestamp: int) -> int:
        if self._last is None:
            self._last, self._extended = timestamp, timestamp
        else:
            delta = (timestamp - self._last) & 0xFFFFFFFF
            self._extended += delta - (1 << 32) if delta >= 1 << 31 else delta
            self._last = timestamp
        return self._extended

    def report(self, ntp: float, rtp: int) -> None:
        """A sender report (NTP time of RTP time `rtp`)."""
        if self._last is None:
            self._report = (ntp, rtp)
            return
        delta = (rtp - self._last) & 0xFFFFFFFF
        extended = self._extended + (delta - (1 << 32) if delta >= 1 << 31 else delta)
        self._report = (ntp, extended)

    @property
    def reported(self) -> bool:
        return self._report is not None

    def ntp(self, extended: int) -> float | None:
        """The camera's NTP time of an unwrapped RTP time, through its newest sender report."""
        if self._report is None:
            return None
        ntp, rtp = self._report
        return ntp + (extended - rtp) / self.rate


class Envelope:
    """The least delay seen from a clock to time.time(): arrival minus the sender's time, following
    the lower envelope (a smaller one is taken at once, a larger one slowly: clocks drift) and
    starting over after a jump (a camera that restarted its clock)."""

    RISE = 0.002
    JUMP = 1.0

    def __init__(self) -> None:
        self.offset: float | None = None

    def add(self, sample: float) -> float:
        offset = self.offset
        if offset is None or abs(sample - offset) > self.JUMP or sample < offset:
            self.offset = sample
        else:
            self.offset = offset + (sample - offset) * self.RISE
        return self.offset


class Timeline:
    """A session's sound put on its picture's timeline (camtrack stamps a picture with the time.time()
    its last packet came: `captured`). With sender reports on both tracks, a sound's capture time is
    its camera NTP time plus the picture's least delay from that clock (pictures and sound of one
    instant then get one capture time: lip-sync as the camera made it); otherwise its arrival, on
    its own RTP clock's lower envelope (smooth, within network jitter of the picture's)."""

    def __init__(self, video_rate: int, audio_rate: int) -> None:
        self.video = TrackClock(video_rate)
        self.audio = TrackClock(audio_rate)
        self.video_delay = Envelope()
        self.audio_delay = Envelope()
        #: whether the last capture time came through both sender reports
        self.synced = False

    def picture(self, timestamp: int, arrived: float) -> None:
        """A picture's last packet (the marker) came at `arrived`."""
        extended = self.video.extend(timestamp)
        ntp = self.video.ntp(extended)
        if ntp is not None:
            self.video_delay.add(arrived - ntp)

    def sound(self, timestamp: int, arrived: float) -> float:
        """The capture time of the sound of RTP time `timestamp`, which came at `arrived`."""
        extended = self.audio.extend(timestamp)
        ntp = self.audio.ntp(extended)
        if ntp is not None and self.video_delay.offset is not None:
            self.synced = True
            return ntp + self.video_delay.offset
        self.synced = False
        return extended / self.audio.rate + self.audio_delay.add(arrived - extended / self.audio.rate)
