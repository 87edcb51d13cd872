"""How large a picture read from a camera may be, checked before anything is allocated for it.

A camera's H.264 says its own size (the SPS; PyAV's codec info repeats it), and everything made
for that camera is allocated at that size: the decoder's pictures for snapshots and MJPEG (about
40 bytes a pixel with FFmpeg's reference pictures, BGR and I420 copies: 2.9 GB at 8192x8192), the
"no signal" picture, the join bridge's encoder. A camera that claims 65536x65536 would ask for
12 GiB. So a size beyond these limits is refused where it is read (`SizeRefused`, with the reason),
and decoders are opened with FFmpeg's own `max_pixels` as a backstop for an SPS camtrack did not see.

The limits are H.264's own for level 5.2, the highest level cameras use: at most 36 864 macroblocks
a picture (9.4 Mpixel: 3840x2160 and 4096x2160 fit, as does 4096x2304) and at most
sqrt(8 x 36 864) = 543 macroblocks a side (8688 pixels). A larger stream (level 6, 8K) is not a
camera this server can decode on a small machine anyway.
"""

from __future__ import annotations

#: the most pixels a camera's picture may have (H.264 level 5.2's MaxFS: 36 864 macroblocks)
MAX_PIXELS = 36864 * 256
#: the longest side in pixels (H.264 A.3.1: a side at most sqrt(8 x MaxFS) macroblocks)
MAX_SIDE = 543 * 16
#: the size "no signal" is shown at when neither the camera nor the settings give a usable one
FALLBACK_SIZE = (640, 480)


class SizeRefused(ValueError):
    """A camera's stream is larger than camtrack accepts (the message says what and the limit)."""


def size_problem(width: int, height: int) -> str | None:
    """Why a picture of `width` x `height` is refused, or None when it is within the limits."""
    if width <= 0 or height <= 0:
        return "no picture size"
    if width > MAX_SIDE or height > MAX_SIDE:
        return f"a side longer than {MAX_SIDE} pixels"
    if width * height > MAX_PIXELS:
        return f"{width * height / 1e6:.1f} Mpixel, more than {MAX_PIXELS / 1e6:.1f}"
    return None


def within_limits(width: int, height: int) -> bool:
    return size_problem(width, height) is None


def check_size(width: int, height: int, what: str) -> None:
    """Raise `SizeRefused` (saying `what` claimed the size) unless the size is within the limits."""
    problem = size_problem(width, height)
    if problem is not None:
        raise SizeRefused(f"{what} claims {width}x{height}, refused: {problem} (at most "
                          f"{MAX_PIXELS / 1e6:.1f} Mpixel and {MAX_SIDE} pixels a side)")
