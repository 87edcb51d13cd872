"""Fragmented MP4 of H.264 access units, written as they come: the bytes of a clip file.

Written here rather than by FFmpeg's muxer so that nothing is decoded or encoded (PyAV's muxer
opens an encoder for a stream it did not demux, whose parameter sets then replace the camera's),
the camera's NAL units go into the file byte for byte (only their Annex-B start codes become
4-byte lengths), and each fragment reaches the file (flushed to the system) as soon as it is
complete: a fragment starts at every keyframe and at least every FRAGMENT_SECONDS, so a process
killed mid-clip leaves a file that plays up to within about a second of the kill.

Layout (ISO/IEC 14496-12, -15): `ftyp`, `moov` (a video track, an `avc1` sample entry with the
camera's SPS/PPS in its `avcC`, durations 0 until the clip is finished, `mvex` with a `mehd`),
then `moof`+`mdat` per fragment (`tfhd` with default-base-is-moof, `tfdt`, `trun` with each
sample's duration, size and sync flag). `finish()` patches the durations in place;
`repair(path)` does the same for a file left by a crash, after cutting off a torn last fragment.

A camera with sound gets a second track (id 2): Opus at 48 kHz, an `Opus` sample entry with its
`dOps` box (the Opus-in-ISOBMFF mapping, ISO/IEC 23003-5 style: "Encapsulation of Opus in ISO Base
Media File Format"), its packets as they came (nothing decoded or encoded). A fragment then has
one `traf` per track in its `moof` and the samples of both in its `mdat` (the video's first). The
sound is placed on the video's timeline by capture times: its first packet at its capture time
minus the clip's first picture's, the next ones by their 48 kHz pts (no gap, no overlap), set
again from the capture time when the two part by more than AUDIO_DRIFT (the sound's feed
restarted, a stall).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ...sources.h264 import NAL_AUD, NAL_PPS, NAL_SPS, nal_type, split_annexb

#: the media clock of the track (the packets' own: 90 kHz)
TIMESCALE = 90_000
#: a fragment ends at a keyframe or after this long, whichever is sooner
FRAGMENT_SECONDS = 1.0
#: sample flags: a sync sample, and a non-sync one (sample_depends_on=1, is_non_sync_sample=1)
SYNC, NON_SYNC = 0x02000000, 0x01010000
_MOVIE_TIMESCALE = 1000
#: the sound's track: its id, its media clock (Opus's), and how far (s) its pts may part from its
#: capture times before they are followed again
AUDIO_TRACK = 2
AUDIO_TIMESCALE = 48_000
AUDIO_DRIFT = 0.1
#: a fragment of sound alone is cut when this much is pending and no picture came (video stalled)
AUDIO_FRAGMENT_SECONDS = 2.0


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)


def parameter_sets(data: bytes) -> tuple[list[bytes], list[bytes]]:
    """The SPS and PPS NAL units of an Annex-B access unit."""
    nals = split_annexb(data)
    return [n for n in nals if nal_type(n) == NAL_SPS], [n for n in nals if nal_type(n) == NAL_PPS]


def avcc(sps: list[bytes], pps: list[bytes]) -> bytes:
    """The AVCDecoderConfigurationRecord of these parameter sets (4-byte NAL lengths)."""
    first = sps[0]
    record = bytes([1, first[1], first[2], first[3], 0xFF, 0xE0 | len(sps)])
    record += b"".join(struct.pack(">H", len(s)) + s for s in sps)
    record += bytes([len(pps)]) + b"".join(struct.pack(">H", len(p)) + p for p in pps)
    if first[1] in (100, 110, 122, 144):
        record += bytes([0xFC | 1, 0xF8, 0xF8, 0])  # 4:2:0, 8 bits, no SPS extensions
    return record


def opus_track(channels: int, pre_skip: int = 0) -> bytes:
    """The `trak` of the sound: Opus, 48 kHz, `channels` (an `Opus` sample entry and its `dOps`).

    The pre-skip is 0: the packets are live sound cut from a running stream (the encoder's few ms of
    look-ahead stay in, the sound a few ms late at most), not the start of an Opus stream."""
    tkhd = full_box(b"tkhd", 0, 3, struct.pack(">IIIII", 0, 0, AUDIO_TRACK, 0, 0), bytes(8),
                    struct.pack(">hhhH", 0, 1, 0x0100, 0), MATRIX, struct.pack(">II", 0, 0))
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, AUDIO_TIMESCALE, 0), struct.pack(">HH", 0x55C4, 0))
    hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, b"soun"), b"camtrack\0")
    # dOps: Version 0, OutputChannelCount, PreSkip, InputSampleRate, OutputGain, ChannelMappingFamily 0
    dops = box(b"dOps", struct.pack(">BBHIhB", 0, channels, pre_skip, AUDIO_TIMESCALE, 0, 0))
    opus = box(b"Opus", bytes(6), struct.pack(">H", 1), bytes(8), struct.pack(">HHHH", channels, 16, 0, 0),
               struct.pack(">I", AUDIO_TIMESCALE << 16), dops)
    stbl = box(b"stbl", full_box(b"stsd", 0, 0, struct.pack(">I", 1), opus),
               full_box(b"stts", 0, 0, struct.pack(">I", 0)), full_box(b"stsc", 0, 0, struct.pack(">I", 0)),
               full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)), full_box(b"stco", 0, 0, struct.pack(">I", 0)))
    minf = box(b"minf", full_box(b"smhd", 0, 0, struct.pack(">hH", 0, 0)),
               box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1))), stbl)
    return box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, minf))


def opus_channels(packet: bytes) -> int:
    """The channels an Opus packet codes (its TOC byte's stereo flag, RFC 6716 3.1)."""
    return 2 if packet and packet[0] & 0x04 else 1


def init_segment(width: int, height: int, sps: list[bytes], pps: list[bytes], audio_channels: int = 0) -> bytes:
    """`ftyp` and `moov` of an H.264 fragmented MP4, with an Opus track of `audio_channels` when not
    0 (durations 0: see `finish`)."""
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isom", b"iso6", b"avc1", b"mp41",
               *((b"Opus",) if audio_channels else ()))
    next_track = AUDIO_TRACK + 1 if audio_channels else 2
    mvhd = full_box(b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, _MOVIE_TIMESCALE, 0),
                    struct.pack(">IH10x", 0x00010000, 0x0100), MATRIX, bytes(24), struct.pack(">I", next_track))
    tkhd = full_box(b"tkhd", 0, 3, struct.pack(">IIIII", 0, 0, 1, 0, 0), bytes(8),
                    struct.pack(">hhhH", 0, 0, 0, 0), MATRIX, struct.pack(">II", width << 16, height << 16))
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, TIMESCALE, 0), struct.pack(">HH", 0x55C4, 0))
    hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, b"vide"), b"camtrack\0")
    avc1 = box(b"avc1", bytes(6), struct.pack(">H", 1), bytes(16), struct.pack(">HH", width, height),
               struct.pack(">III", 0x00480000, 0x00480000, 0), struct.pack(">H", 1), bytes(32),
               struct.pack(">Hh", 0x0018, -1), box(b"avcC", avcc(sps, pps)))
    stbl = box(b"stbl", full_box(b"stsd", 0, 0, struct.pack(">I", 1), avc1),
               full_box(b"stts", 0, 0, struct.pack(">I", 0)), full_box(b"stsc", 0, 0, struct.pack(">I", 0)),
               full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)), full_box(b"stco", 0, 0, struct.pack(">I", 0)))
    minf = box(b"minf", full_box(b"vmhd", 0, 1, bytes(8)),
               box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1))), stbl)
    trak = box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, minf))
    traks = [trak]
    trexes = [full_box(b"trex", 0, 0, struct.pack(">IIIII", 1, 1, 0, 0, 0))]
    if audio_channels:
        traks.append(opus_track(audio_channels))
        trexes.append(full_box(b"trex", 0, 0, struct.pack(">IIIII", AUDIO_TRACK, 1, 0, 0, 0)))
    mvex = box(b"mvex", full_box(b"mehd", 1, 0, struct.pack(">Q", 0)), *trexes)
    return ftyp + box(b"moov", mvhd, *traks, mvex)


def sample_bytes(data: bytes) -> bytes:
    """An Annex-B access unit as an MP4 sample: each NAL unit (access unit delimiters left out:
    MP4 has no use for them) with a 4-byte length in front."""
    return b"".join(struct.pack(">I", len(n)) + n for n in split_annexb(data) if nal_type(n) != NAL_AUD)


@dataclass
class Sample:
    data: bytes
    #: decode time from the clip's start, in TIMESCALE ticks
    time: int
    sync: bool


def fragment(sequence: int, base_time: int, samples: list[Sample], durations: list[int],
             audio: tuple[int, list[Sample], list[int]] | None = None) -> bytes:
    """A `moof` and its `mdat` of `samples` (with their `durations`), decoded from `base_time`; and
    of the sound's samples (`audio`: its base time, samples and durations) when given. A track
    without samples has no `traf`."""
    tracks: list[tuple[int, int, list[Sample], list[int], bool]] = []
    if samples:
        tracks.append((1, base_time, samples, durations, True))
    if audio is not None and audio[1]:
        tracks.append((AUDIO_TRACK, *audio, False))
    mfhd = full_box(b"mfhd", 0, 0, struct.pack(">I", sequence))
    # sizes first: each trun's data_offset counts from the start of the moof
    sizes = []
    for _track, _base, track_samples, _durations, video in tracks:
        entry = 12 if video else 8
        trun_size = 8 + 4 + 4 + 4 + entry * len(track_samples)
        sizes.append(8 + (8 + 4 + 4) + (8 + 4 + 8) + trun_size)  # traf: tfhd, tfdt, trun
    moof_size = 8 + len(mfhd) + sum(sizes)
    trafs = []
    offset = moof_size + 8
    for track, base, track_samples, track_durations, video in tracks:
        if video:
            entries = b"".join(struct.pack(">III", duration, len(s.data), SYNC if s.sync else NON_SYNC)
                               for s, duration in zip(track_samples, track_durations, strict=True))
            trun = full_box(b"trun", 0, 0x000701, struct.pack(">Ii", len(track_samples), offset), entries)
        else:
            entries = b"".join(struct.pack(">II", duration, len(s.data))
                               for s, duration in zip(track_samples, track_durations, strict=True))
            trun = full_box(b"trun", 0, 0x000301, struct.pack(">Ii", len(track_samples), offset), entries)
        tfhd = full_box(b"tfhd", 0, 0x020000, struct.pack(">I", track))
        tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", base))
        trafs.append(box(b"traf", tfhd, tfdt, trun))
        offset += sum(len(s.data) for s in track_samples)
    moof = box(b"moof", mfhd, *trafs)
    assert len(moof) == moof_size
    payload = b"".join(s.data for _t, _b, track_samples, _d, _v in tracks for s in track_samples)
    return moof + struct.pack(">I4s", 8 + len(payload), b"mdat") + payload


class Fmp4Writer:
    """One clip being written: `add` each access unit (Annex-B, pts in 90 kHz ticks) in decode
    order, `add_audio` each Opus packet (when made with `audio_channels`), then `finish`. Runs on
    the recorder's writing thread (blocking file I/O).

    `start` is the capture time (wall-clock seconds) of the first picture: the sound's capture times
    are placed on the video's timeline from it."""

    def __init__(self, file: BinaryIO, width: int, height: int, sps: list[bytes], pps: list[bytes],
                 audio_channels: int = 0, start: float = 0.0) -> None:
        self.file = file
        head = init_segment(width, height, sps, pps, audio_channels)
        ftyp_size = struct.unpack(">I", head[:4])[0]
        self._moov_at = file.tell() + ftyp_size
        file.write(head)
        file.flush()
        self._pending: list[Sample] = []
        self._sequence = 0
        self._first_pts: int | None = None
        self._last_time = -1
        self._last_duration = 3000
        self.start = start
        self.has_audio = bool(audio_channels)
        #: the sound's samples not written yet (the last one waits for the next: its duration)
        self._audio: list[Sample] = []
        #: what is added to an Opus packet's pts to place it on the clip's timeline (48 kHz)
        self._audio_offset: int | None = None
        self._audio_end = 0
        self._audio_duration = 960
        #: bytes written so far, and the clip's duration in ticks (complete fragments)
        self.bytes = len(head)
        self.duration = 0
        self.samples = 0
        #: the sound written: its duration (AUDIO_TIMESCALE ticks) and packets
        self.audio_duration = 0
        self.audio_samples = 0

    def add(self, data: bytes, pts: int, keyframe: bool) -> None:
        if self._first_pts is None:
            self._first_pts = pts
        time = pts - self._first_pts
        if time <= self._last_time:
            time = self._last_time + 1  # (decode times must grow)
        pending = self._pending
        if pending and (keyframe or time - pending[0].time >= FRAGMENT_SECONDS * TIMESCALE):
            self._flush(time)
        self._pending.append(Sample(sample_bytes(data), time, keyframe))
        self._last_time = time

    def add_audio(self, data: bytes, pts: int, captured: float) -> None:
        """An Opus packet of pts `pts` (48 kHz, the sound's own clock) whose first sample was
        captured at wall time `captured`. Sound from before the clip's first picture is left out."""
        if not self.has_audio or self._first_pts is None:
            return
        by_clock = round((captured - self.start) * AUDIO_TIMESCALE)
        if self._audio_offset is None or abs(pts + self._audio_offset - by_clock) > AUDIO_DRIFT * AUDIO_TIMESCALE:
            self._audio_offset = by_clock - pts  # (the first packet, or the sound's clock moved)
        time = pts + self._audio_offset
        if time < 0:
            return
        audio = self._audio
        if audio:
            if time <= audio[-1].time:
                return  # (a packet over the last: its time is taken)
        elif time < self._audio_end:
            time = self._audio_end  # (no overlap with what is written)
        audio.append(Sample(data, time, True))
        if audio[-1].time - audio[0].time >= AUDIO_FRAGMENT_SECONDS * AUDIO_TIMESCALE:
            self._flush(None)  # (no picture ended a fragment for that long: the sound goes on alone)

    def _take_audio(self, final: bool) -> tuple[int, list[Sample], list[int]] | None:
        """The sound's pending samples to write now and their durations: all but the last, whose
        duration is not known until the next one comes (all of them when `final`)."""
        audio = self._audio
        if not audio or (len(audio) < 2 and not final):
            return None
        times = [s.time for s in audio]
        durations = [b - a for a, b in zip(times, times[1:], strict=False)]
        if final:
            durations.append(self._audio_duration)
            taken, self._audio = audio, []
        else:
            taken, self._audio = audio[:-1], audio[-1:]
        self._audio_duration = min(durations[-1], 960 * 6) if durations else self._audio_duration
        return taken[0].time, taken, durations

    def _flush(self, next_time: int | None, final: bool = False) -> None:
        """Write a fragment: the pictures pending (lasting up to `next_time`; None: they wait) and
        the sound pending."""
        pending = self._pending if next_time is not None else []
        durations: list[int] = []
        if pending:
            assert next_time is not None
            times = [s.time for s in pending] + [next_time]
            durations = [b - a for a, b in zip(times, times[1:], strict=False)]
            self._last_duration = durations[-1]
        audio = self._take_audio(final) if self.has_audio else None
        if not pending and audio is None:
            return
        self._sequence += 1
        base = pending[0].time if pending else 0
        data = fragment(self._sequence, base, pending, durations, audio)
        self.file.write(data)
        self.file.flush()  # the fragment in the system's hands: a killed process loses nothing of it
        self.bytes += len(data)
        if pending:
            assert next_time is not None
            self.duration = next_time
            self.samples += len(pending)
        if audio is not None:
            self._audio_end = audio[1][-1].time + audio[2][-1]
            self.audio_duration = self._audio_end
            self.audio_samples += len(audio[1])
        if pending:
            self._pending = []

    def finish(self) -> None:
        """Write what is pending (its last picture lasting as long as the one before) and the
        clip's duration into the header."""
        if self._pending or self._audio:
            last = self._pending[-1].time + max(self._last_duration, 1) if self._pending else None
            self._flush(last, final=True)
        patch_durations(self.file, self._moov_at, self.duration, self.audio_duration)
        self.file.flush()


def _find(data: bytes, path: list[bytes], start: int = 0, end: int | None = None) -> int | None:
    """The offset of the box at `path` (its header) within data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size < 8:
            return None
        if kind == path[0]:
            if len(path) == 1:
                return pos
            header = 8 + (4 if kind in (b"mvhd", b"tkhd", b"mdhd", b"mehd") else 0)
            return _find(data, path[1:], pos + header, pos + size)
        pos += size
    return None


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """The boxes in data[start:end]: (kind, offset, size)."""
    found, pos = [], start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size < 8 or pos + size > end:
            break
        found.append((kind, pos, size))
        pos += size
    return found


def patch_durations(file: BinaryIO, moov_at: int, ticks: int, audio_ticks: int = 0) -> None:
    """Write the clip's duration (`ticks` of TIMESCALE; the sound's, `audio_ticks` of
    AUDIO_TIMESCALE) into its mvhd, tkhd, mdhd and mehd."""
    end = file.seek(0, os.SEEK_END)
    file.seek(moov_at)
    size = struct.unpack(">I", file.read(4))[0]
    file.seek(moov_at)
    moov = file.read(size)
    movie = ticks * _MOVIE_TIMESCALE // TIMESCALE
    audio_movie = audio_ticks * _MOVIE_TIMESCALE // AUDIO_TIMESCALE
    writes = [(_find(moov, [b"moov", b"mvhd"]), 8 + 4 + 8 + 4, struct.pack(">I", max(movie, audio_movie)))]
    traks = [at for kind, at, _ in _boxes(moov, 8, len(moov)) if kind == b"trak"]
    for index, trak in enumerate(traks[:2]):
        own_movie, own_ticks = (movie, ticks) if index == 0 else (audio_movie, audio_ticks)
        tkhd, mdhd = _find(moov, [b"trak", b"tkhd"], trak), _find(moov, [b"trak", b"mdia", b"mdhd"], trak)
        writes += [(tkhd, 8 + 4 + 8 + 4 + 4, struct.pack(">I", own_movie)),
                   (mdhd, 8 + 4 + 8 + 4, struct.pack(">I", own_ticks))]
    if len(traks) > 1:  # (in the movie's timescale; a video-only clip keeps its 90 kHz ticks, as it always had)
        writes.append((_find(moov, [b"moov", b"mvex", b"mehd"]), 8 + 4, struct.pack(">Q", max(movie, audio_movie))))
    else:
        writes.append((_find(moov, [b"moov", b"mvex", b"mehd"]), 8 + 4, struct.pack(">Q", ticks)))
    for at, offset, value in writes:
        if at is not None:
            file.seek(moov_at + at + offset)
            file.write(value)
    file.seek(end)


@dataclass
class Repaired:
    #: bytes kept, and cut off (a torn last fragment)
    kept: int
    cut: int
    #: the clip's duration in seconds and its pictures
    seconds: float
    samples: int


@dataclass
class Scanned:
    #: where the moov box starts (None: no header), where the last complete fragment ends
    moov_at: int | None
    good: int
    #: the duration (TIMESCALE ticks) and pictures of the complete fragments
    ticks: int
    samples: int
    #: the sound's duration (AUDIO_TIMESCALE ticks) in them (0: none)
    audio_ticks: int = 0


def _traf_end(data: bytes, traf: int, size: int) -> tuple[int, int, int] | None:
    """A `traf`'s track id, and the end of its samples (its tfdt plus their durations) and their
    count; None if it is not whole."""
    tfhd = _find(data, [b"tfhd"], traf + 8, traf + size)
    tfdt = _find(data, [b"tfdt"], traf + 8, traf + size)
    trun = _find(data, [b"trun"], traf + 8, traf + size)
    if tfhd is None or tfdt is None or trun is None:
        return None
    track = struct.unpack(">I", data[tfhd + 12:tfhd + 16])[0]
    base = struct.unpack(">Q", data[tfdt + 12:tfdt + 20])[0]
    flags = struct.unpack(">I", data[trun + 8:trun + 12])[0] & 0xFFFFFF
    count = struct.unpack(">I", data[trun + 12:trun + 16])[0]
    entry = 4 * bin(flags & 0xF00).count("1")
    first = trun + 16 + (4 if flags & 0x1 else 0) + (4 if flags & 0x4 else 0)
    durations = (sum(struct.unpack(">I", data[first + entry * i:first + entry * i + 4])[0] for i in range(count))
                 if flags & 0x100 else 0)
    return track, base + durations, count


def scan(data: bytes) -> Scanned:
    """How much of a clip file's bytes is whole: its header and complete fragments."""
    pos, moov_at, good, ticks, samples, audio_ticks = 0, None, 0, 0, 0, 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size < 8 or pos + size > len(data):
            break
        if kind == b"moov":
            moov_at, good = pos, pos + size
        elif kind == b"moof":
            mdat = pos + size
            if mdat + 8 > len(data):
                break
            mdat_size, mdat_kind = struct.unpack(">I4s", data[mdat:mdat + 8])
            if mdat_kind != b"mdat" or mdat + mdat_size > len(data):
                break
            trafs = [_traf_end(data, at, traf_size)
                     for traf_kind, at, traf_size in _boxes(data, pos + 8, pos + size) if traf_kind == b"traf"]
            if not trafs or any(t is None for t in trafs):
                break
            for traf in trafs:
                assert traf is not None
                track, traf_end, count = traf
                if track == AUDIO_TRACK:
                    audio_ticks = traf_end
                else:
                    ticks, samples = traf_end, samples + count
            pos = good = mdat + mdat_size
            continue
        elif moov_at is None and kind != b"ftyp":
            break
        pos += size
    return Scanned(moov_at, good, ticks, samples, audio_ticks)


def repair(path: Path) -> Repaired:
    """Close a clip file a crash left unfinished: cut off whatever follows its last complete
    fragment and write its duration (that of its complete fragments) into its header.
    ValueError when the file does not even hold its header."""
    with open(path, "r+b") as file:
        data = file.read()
        found = scan(data)
        if found.moov_at is None:
            raise ValueError(f"{path.name}: no MP4 header")
        file.truncate(found.good)
        patch_durations(file, found.moov_at, found.ticks, found.audio_ticks)
    return Repaired(found.good, len(data) - found.good, found.ticks / TIMESCALE, found.samples)
