"""What an SPS says (camtrack.sources.h264.parse_sps), checked against SPSs libx264 writes."""

from __future__ import annotations

import av
import numpy as np
import pytest

from camtrack.sources.h264 import NAL_SPS, nal_type, parse_sps, split_annexb


def first_sps(profile: str, width: int, height: int, bf: int = 0, interlaced: bool = False) -> bytes:
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    options = {"profile": profile, "bf": str(bf), "preset": "veryfast"}
    if interlaced:
        options["x264-params"] = "interlaced=1"
    codec.options = options
    codec.max_b_frames = bf
    frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")
    data = b"".join(bytes(p) for p in codec.encode(frame)) + b"".join(bytes(p) for p in codec.encode(None))
    return next(n for n in split_annexb(data) if nal_type(n) == NAL_SPS)


@pytest.mark.parametrize(("profile", "idc"), [("baseline", 66), ("main", 77), ("high", 100)])
@pytest.mark.parametrize(("width", "height"), [(320, 240), (1920, 1080), (642, 362), (176, 144)])
def test_size_and_profile(profile: str, idc: int, width: int, height: int) -> None:
    info = parse_sps(first_sps(profile, width, height))
    assert (info.profile_idc, info.width, info.height) == (idc, width, height)
    assert info.level_idc > 0


def test_interlaced_size() -> None:
    info = parse_sps(first_sps("high", 720, 576, interlaced=True))
    assert (info.width, info.height) == (720, 576)


@pytest.mark.parametrize(("profile", "bf", "reorders"), [("baseline", 0, False), ("main", 0, False),
                                                         ("high", 0, False), ("main", 2, True), ("high", 3, True)])
def test_reordering(profile: str, bf: int, reorders: bool) -> None:
    info = parse_sps(first_sps(profile, 320, 240, bf))
    assert info.max_reorder_frames is not None  # libx264 writes the VUI's bitstream restriction
    assert (info.max_reorder_frames > 0) is reorders


@pytest.mark.parametrize("junk", [b"", b"\x67", b"\x68\x42\x00\x1e", b"\x67\x64\x00", b"\x67" + b"\x00" * 12,
                                  b"\x67\xff\xff\xff\xff"])
def test_junk_is_refused(junk: bytes) -> None:
    with pytest.raises(ValueError):
        parse_sps(junk)
