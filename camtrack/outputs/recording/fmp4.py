"""Fragmented MP4 of H.264 access units, written as they come: the bytes of a clip file.

Written here rather than by FFmpeg's muxer so that nothing is decoded or encoded (PyAV's muxer
opens an encoder for a stream it did not demux, whose parameter sets then replace the camera's),
the camera's NAL units go into the file byte for byte (only their Annex-B start codes become
4-byte lengths), and each fragment reaches the file (flushed to the system) as soon as it is
complete: a fragment starts at every keyframe and at least every FRAGMENT_SECONDS, so a process
killed mid-clip leaves a file that plays up to within about a second of the kill.

Layout (ISO/IEC 14496-12, -15): `ftyp`, `moov` (one video track, an `avc1` sample entry with the
camera's SPS/PPS in its `avcC`, durations 0 until the clip is finished, `mvex` with a `mehd`),
then `moof`+`mdat` per fragment (`tfhd` with default-base-is-moof, `tfdt`, `trun` with each
sample's duration, size and sync flag). `finish()` patches the durations in place;
`repair(path)` does the same for a file left by a crash, after cutting off a torn last fragment.
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
#: where the durations sit, relative to the start of the `moov` box (fixed by the layout below)
_MVHD_DURATION = 8 + 8 + 4 + 4 + 4  # moov header, mvhd header, version/flags, times, timescale
_MOVIE_TIMESCALE = 1000


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


def init_segment(width: int, height: int, sps: list[bytes], pps: list[bytes]) -> bytes:
    """`ftyp` and `moov` of a one-track H.264 fragmented MP4 (durations 0: see `finish`)."""
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isom", b"iso6", b"avc1", b"mp41")
    mvhd = full_box(b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, _MOVIE_TIMESCALE, 0),
                    struct.pack(">IH10x", 0x00010000, 0x0100), MATRIX, bytes(24), struct.pack(">I", 2))
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
    mvex = box(b"mvex", full_box(b"mehd", 1, 0, struct.pack(">Q", 0)),
               full_box(b"trex", 0, 0, struct.pack(">IIIII", 1, 1, 0, 0, 0)))
    return ftyp + box(b"moov", mvhd, trak, mvex)


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


def fragment(sequence: int, base_time: int, samples: list[Sample], durations: list[int]) -> bytes:
    """A `moof` and its `mdat` of `samples` (with their `durations`), decoded from `base_time`."""
    entries = b"".join(struct.pack(">III", duration, len(s.data), SYNC if s.sync else NON_SYNC)
                       for s, duration in zip(samples, durations, strict=True))
    trun_size = 8 + 4 + 4 + 4 + len(entries)
    tfhd = full_box(b"tfhd", 0, 0x020000, struct.pack(">I", 1))
    tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", base_time))
    mfhd = full_box(b"mfhd", 0, 0, struct.pack(">I", sequence))
    moof_size = 8 + len(mfhd) + 8 + len(tfhd) + len(tfdt) + trun_size
    # data_offset: from the start of the moof to the first sample (past the mdat's header)
    trun = full_box(b"trun", 0, 0x000701, struct.pack(">Ii", len(samples), moof_size + 8), entries)
    moof = box(b"moof", mfhd, box(b"traf", tfhd, tfdt, trun))
    assert len(moof) == moof_size
    payload = b"".join(s.data for s in samples)
    return moof + struct.pack(">I4s", 8 + len(payload), b"mdat") + payload


class Fmp4Writer:
    """One clip being written: `add` each access unit (Annex-B, pts in 90 kHz ticks) in decode
    order, then `finish`. Runs on the recorder's writing thread (blocking file I/O)."""

    def __init__(self, file: BinaryIO, width: int, height: int, sps: list[bytes], pps: list[bytes]) -> None:
        self.file = file
        head = init_segment(width, height, sps, pps)
        ftyp_size = struct.unpack(">I", head[:4])[0]
        self._moov_at = file.tell() + ftyp_size
        file.write(head)
        file.flush()
        self._pending: list[Sample] = []
        self._sequence = 0
        self._first_pts: int | None = None
        self._last_time = -1
        self._last_duration = 3000
        #: bytes written so far, and the clip's duration in ticks (complete fragments)
        self.bytes = len(head)
        self.duration = 0
        self.samples = 0

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

    def _flush(self, next_time: int) -> None:
        pending = self._pending
        times = [s.time for s in pending] + [next_time]
        durations = [b - a for a, b in zip(times, times[1:], strict=False)]
        self._last_duration = durations[-1]
        self._sequence += 1
        data = fragment(self._sequence, pending[0].time, pending, durations)
        self.file.write(data)
        self.file.flush()  # the fragment in the system's hands: a killed process loses nothing of it
        self.bytes += len(data)
        self.duration = next_time
        self.samples += len(pending)
        self._pending = []

    def finish(self) -> None:
        """Write what is pending (its last picture lasting as long as the one before) and the
        clip's duration into the header."""
        if self._pending:
            self._flush(self._pending[-1].time + max(self._last_duration, 1))
        patch_durations(self.file, self._moov_at, self.duration)
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


def patch_durations(file: BinaryIO, moov_at: int, ticks: int) -> None:
    """Write the clip's duration (`ticks` of TIMESCALE) into its mvhd, tkhd, mdhd and mehd."""
    end = file.seek(0, os.SEEK_END)
    file.seek(moov_at)
    size = struct.unpack(">I", file.read(4))[0]
    file.seek(moov_at)
    moov = file.read(size)
    movie = ticks * _MOVIE_TIMESCALE // TIMESCALE
    writes = [(_find(moov, [b"moov", b"mvhd"]), 8 + 4 + 8 + 4, struct.pack(">I", movie)),
              (_find(moov, [b"moov", b"trak", b"tkhd"]), 8 + 4 + 8 + 4 + 4, struct.pack(">I", movie)),
              (_find(moov, [b"moov", b"trak", b"mdia", b"mdhd"]), 8 + 4 + 8 + 4, struct.pack(">I", ticks)),
              (_find(moov, [b"moov", b"mvex", b"mehd"]), 8 + 4, struct.pack(">Q", ticks))]
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


def scan(data: bytes) -> Scanned:
    """How much of a clip file's bytes is whole: its header and complete fragments."""
    pos, moov_at, good, ticks, samples = 0, None, 0, 0, 0
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
            tfdt = _find(data, [b"traf", b"tfdt"], pos + 8, pos + size)
            trun = _find(data, [b"traf", b"trun"], pos + 8, pos + size)
            if tfdt is None or trun is None:
                break
            base = struct.unpack(">Q", data[tfdt + 12:tfdt + 20])[0]
            count = struct.unpack(">I", data[trun + 12:trun + 16])[0]
            durations = sum(struct.unpack(">I", data[trun + 20 + 12 * i:trun + 24 + 12 * i])[0]
                            for i in range(count))
            ticks, samples = base + durations, samples + count
            pos = good = mdat + mdat_size
            continue
        elif moov_at is None and kind != b"ftyp":
            break
        pos += size
    return Scanned(moov_at, good, ticks, samples)


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
        patch_durations(file, found.moov_at, found.ticks)
    return Repaired(found.good, len(data) - found.good, found.ticks / TIMESCALE, found.samples)
