"""The parts of pylibsrtp camtrack relies on that are not its public API (checked against pylibsrtp 1.0).

Its `Session.protect` checks its arguments, allocates a length cell and copies twice per packet,
a third of what protecting a packet costs; camtrack protects every packet of every viewer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: attributes of a pylibsrtp Session used below (it exists once aiortc's DTLS has connected, on
#: RTCDtlsTransport._tx_srtp): tests/test_hooks.py checks them on a live connection
INSTANCE_HOOKED: dict[str, list[str]] = {"Session": ["_srtp", "_cdata", "_buffer"]}

#: the most SRTP adds to a packet (libsrtp's SRTP_MAX_TRAILER_LEN)
SRTP_MAX_TRAILER = 16 + 128


def fast_protect(session: Any) -> Callable[[bytes], bytes]:
    """pylibsrtp `Session.protect` without its per-call checks and allocations (a third of its
    cost per packet): the session's own buffer, one length cell, libsrtp called directly.
    Relies on: `Session._srtp` (the srtp_t cell), `_cdata` (its packet buffer, as cffi char[])
    and `_buffer` (the same memory as a buffer), and `pylibsrtp._binding`'s `ffi` and
    `lib.srtp_protect(srtp, data, int *length)`."""
    from pylibsrtp import Error
    from pylibsrtp._binding import ffi, lib  # type: ignore[import-not-found]

    srtp, cdata, buffer = session._srtp[0], session._cdata, session._buffer
    limit = len(cdata) - SRTP_MAX_TRAILER
    length = ffi.new("int *")
    srtp_protect = lib.srtp_protect

    def protect(data: bytes) -> bytes:
        size = len(data)
        if size > limit:
            raise ValueError("packet is too long")
        length[0] = size
        buffer[0:size] = data
        status = srtp_protect(srtp, cdata, length)
        if status:
            raise Error(f"srtp_protect failed with status {status}")
        return buffer[0:length[0]]  # type: ignore[no-any-return]

    # the session owns the libsrtp context and buffer used above: it lives as long as this does
    protect.session = session  # type: ignore[attr-defined]
    return protect
