"""H.264 bytes: NAL units in Annex-B and AVCC framing, parameter sets, and what an SPS says.

Shared by the packet sources (PyAV's demuxer, camtrack's own RTSP reader): what reaches viewers
is Annex-B access units with the parameter sets in front of every IDR.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..media.sizes import check_size

START_CODE = b"\x00\x00\x00\x01"
#: H.264 NAL unit types
NAL_IDR, NAL_SEI, NAL_SPS, NAL_PPS, NAL_AUD = 5, 6, 7, 8, 9


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of Annex-B bytes (start codes of 3 or 4 bytes), without their start codes."""
    nals: list[bytes] = []
    start = data.find(b"\x00\x00\x01")
    while start >= 0:
        begin = start + 3
        end = data.find(b"\x00\x00\x01", begin)
        if end < 0:
            nal = data[begin:]
        else:
            nal = data[begin:end]
            # a 4-byte start code's leading zero (and trailing zeros) belong to no NAL unit
            nal = nal.rstrip(b"\x00")
        if nal:
            nals.append(nal)
        start = end
    return nals


def split_avcc(data: bytes, length_size: int = 4) -> list[bytes]:
    """The NAL units of length-prefixed (AVCC, as in MP4 and MKV) bytes."""
    nals: list[bytes] = []
    pos = 0
    while pos + length_size <= len(data):
        length = int.from_bytes(data[pos:pos + length_size], "big")
        pos += length_size
        if length == 0 or pos + length > len(data):
            break
        nals.append(data[pos:pos + length])
        pos += length
    return nals


def parse_avcc_extradata(extradata: bytes) -> tuple[int, list[bytes], list[bytes]]:
    """An avcC box's NAL length size, SPS list and PPS list."""
    if len(extradata) < 7 or extradata[0] != 1:
        raise ValueError("not an avcC record")
    length_size = (extradata[4] & 0x03) + 1
    pos = 6
    lists: list[list[bytes]] = []
    count = extradata[5] & 0x1F
    for which in range(2):
        if which == 1:
            if pos >= len(extradata):
                break
            count = extradata[pos]
            pos += 1
        found: list[bytes] = []
        for _ in range(count):
            length = int.from_bytes(extradata[pos:pos + 2], "big")
            pos += 2
            found.append(extradata[pos:pos + length])
            pos += length
        lists.append(found)
    while len(lists) < 2:
        lists.append([])
    return length_size, lists[0], lists[1]


def nal_type(nal: bytes) -> int:
    return nal[0] & 0x1F if nal else 0


def profile_level_id(sps: bytes) -> str | None:
    """The SDP profile-level-id (profile_idc, constraint flags, level_idc) of an SPS NAL unit."""
    return sps[1:4].hex() if len(sps) >= 4 and nal_type(sps) == NAL_SPS else None


def annexb(nals: list[bytes]) -> bytes:
    return b"".join(START_CODE + nal for nal in nals)


class H264Converter:
    """Turns a stream's packets into Annex-B access units with the parameter sets in front of
    every IDR, learning the parameter sets from extradata and from the stream itself."""

    def __init__(self, extradata: bytes | None) -> None:
        self.length_size = 0  # 0: the packets are Annex-B already
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        if extradata:
            if extradata[0] == 1:
                self.length_size, sps, pps = parse_avcc_extradata(extradata)
                nals = sps + pps
            else:
                nals = split_annexb(extradata)
            for nal in nals:
                self._learn(nal)

    @property
    def parameter_sets(self) -> tuple[bytes, ...]:
        """SPS and PPS as Annex-B NAL units (with their start codes), when known."""
        return tuple(START_CODE + nal for nal in (self.sps, self.pps) if nal is not None)

    def _learn(self, nal: bytes) -> bool:
        """Keep a parameter set; False for an SPS that cannot be read (dropped: a decoder given
        it might allocate whatever it says). An SPS claiming a size beyond the limits is refused
        (`SizeRefused`), before anything is made at that size."""
        kind = nal_type(nal)
        if kind == NAL_SPS:
            try:
                info = parse_sps(nal)
            except ValueError:
                return False
            check_size(info.width, info.height, "the camera's SPS")
            self.sps = nal
        elif kind == NAL_PPS:
            self.pps = nal
        return True

    def convert(self, data: bytes) -> tuple[bytes, bool]:
        """One packet's Annex-B bytes and whether it holds an IDR."""
        return self.convert_nals(split_avcc(data, self.length_size) if self.length_size else split_annexb(data))

    def convert_nals(self, nals: list[bytes]) -> tuple[bytes, bool]:
        """One access unit's NAL units as Annex-B bytes, and whether it holds an IDR."""
        kinds = set()
        kept: list[bytes] = []
        for nal in nals:
            kind = nal_type(nal)
            if kind == NAL_AUD:
                continue  # access unit delimiters carry nothing a receiver needs
            if not self._learn(nal):
                continue
            kinds.add(kind)
            kept.append(nal)
        idr = NAL_IDR in kinds
        if idr and not (NAL_SPS in kinds and NAL_PPS in kinds) and self.sps is not None and self.pps is not None:
            kept = [nal for nal in kept if nal_type(nal) not in (NAL_SPS, NAL_PPS)]
            kept[:0] = [self.sps, self.pps]
        return annexb(kept), idr



# -- what an SPS says

#: profiles whose SPS carries chroma format, bit depths and scaling matrices (H.264 7.3.2.1.1)
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


@dataclass(frozen=True)
class SpsInfo:
    """What a sequence parameter set says about the pictures that follow it."""

    profile_idc: int
    level_idc: int
    width: int
    height: int
    #: pictures a decoder may have to hold back for reordering (B-frames) when the SPS says so
    #: (VUI bitstream restriction), else None: unknown
    max_reorder_frames: int | None


class _Bits:
    """An RBSP read bit by bit (Exp-Golomb codes as H.264 7.2 defines them)."""

    def __init__(self, nal: bytes) -> None:
        # emulation prevention: 00 00 03 stands for 00 00
        self.data = nal[1:].replace(b"\x00\x00\x03", b"\x00\x00")
        self.pos = 0

    def u(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise ValueError("SPS ends early")
            value = (value << 1) | ((self.data[byte] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code in SPS")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale:
            next_scale = (last + bits.se()) % 256
        last = next_scale or last


def _skip_hrd(bits: _Bits) -> None:
    count = bits.ue() + 1
    bits.u(8)  # bit_rate_scale, cpb_size_scale
    for _ in range(count):
        bits.ue(), bits.ue(), bits.u(1)
    bits.u(20)  # four delay/length fields of 5 bits


def parse_sps(sps: bytes) -> SpsInfo:
    """The profile, level, picture size and reordering of an SPS NAL unit (ValueError if it is not one)."""
    if nal_type(sps) != NAL_SPS or len(sps) < 4:
        raise ValueError("not an SPS")
    bits = _Bits(sps)
    profile = bits.u(8)
    bits.u(8)  # constraint flags
    level = bits.u(8)
    bits.ue()  # seq_parameter_set_id
    chroma_format = 1
    if profile in _HIGH_PROFILES:
        chroma_format = bits.ue()
        if chroma_format == 3:
            bits.u(1)  # separate_colour_plane_flag
        bits.ue(), bits.ue()  # bit depths
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma_format != 3 else 12):
                if bits.u(1):
                    _skip_scaling_list(bits, 16 if index < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()
    elif poc_type == 1:
        bits.u(1)
        bits.se(), bits.se()
        for _ in range(bits.ue()):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_units = bits.ue() + 1
    frame_mbs_only = bits.u(1)
    if not frame_mbs_only:
        bits.u(1)  # mb_adaptive_frame_field_flag
    bits.u(1)  # direct_8x8_inference_flag
    width, height = width_mbs * 16, height_units * 16 * (2 - frame_mbs_only)
    if bits.u(1):  # frame_cropping_flag
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        unit_x = 2 if chroma_format in (1, 2) else 1
        unit_y = (2 if chroma_format == 1 else 1) * (2 - frame_mbs_only)
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
    reorder: int | None = None
    if profile == 66:
        reorder = 0  # Baseline has no B-frames
    try:
        if bits.u(1):  # vui_parameters_present_flag
            reorder = _vui_reorder(bits, reorder)
    except ValueError:
        pass  # a truncated VUI still gave the size
    return SpsInfo(profile, level, width, height, reorder)


def _vui_reorder(bits: _Bits, default: int | None) -> int | None:
    """max_num_reorder_frames from the VUI's bitstream restriction, else `default`."""
    if bits.u(1):  # aspect_ratio_info_present_flag
        if bits.u(8) == 255:  # Extended_SAR
            bits.u(32)
    if bits.u(1):  # overscan_info_present_flag
        bits.u(1)
    if bits.u(1):  # video_signal_type_present_flag
        bits.u(4)
        if bits.u(1):
            bits.u(24)
    if bits.u(1):  # chroma_loc_info_present_flag
        bits.ue(), bits.ue()
    if bits.u(1):  # timing_info_present_flag
        bits.u(32), bits.u(32), bits.u(1)
    nal_hrd = bits.u(1)
    if nal_hrd:
        _skip_hrd(bits)
    vcl_hrd = bits.u(1)
    if vcl_hrd:
        _skip_hrd(bits)
    if nal_hrd or vcl_hrd:
        bits.u(1)  # low_delay_hrd_flag
    bits.u(1)  # pic_struct_present_flag
    if not bits.u(1):  # bitstream_restriction_flag
        return default
    bits.u(1)
    bits.ue(), bits.ue(), bits.ue(), bits.ue()
    return bits.ue()  # max_num_reorder_frames
