"""The only place camtrack names private parts of the libraries it builds on.

aiortc, aioice, aiohttp and pylibsrtp offer no public way to do some of what camtrack does:
choose the local addresses ICE offers, gather every peer's host candidates on one shared UDP
socket, keep packets from strangers away from a peer's DTLS and SRTP, route FIR in its RFC 5104
form, hear keyframe requests for pre-encoded packets, cap what a viewer can have retransmitted,
send RTP packetized once for every viewer, and give HTTP connections deadlines. Each module
here holds one library's part, as small functions that each say what they rely on; the modules
that use them are organised by purpose (camtrack.outputs.webrtc.addresses, icegate, hearing,
rtcp, rtpsend; camtrack.connections). tests/test_layout.py checks that no other module names a
private attribute of these libraries; `check_hooks()` (run at start-up, and by tests/test_hooks.py
beside behavioural checks of each seam) fails loudly when an upgrade moves an attribute, instead
of silently turning a protection off.
"""

from __future__ import annotations

from typing import Any

from . import aiohttp, aioice, aiortc, pylibsrtp

__all__ = ["HOOKED", "INSTANCE_HOOKED", "HookMissing", "aiohttp", "aioice", "aiortc", "check_hooks", "pylibsrtp"]

#: (object, attribute) pairs the seams read, replace or override
HOOKED: list[tuple[Any, str]] = [*aioice.HOOKED, *aiortc.HOOKED, *aiohttp.HOOKED]
#: attributes set in __init__ (so not on the class), by class name
INSTANCE_HOOKED: dict[str, list[str]] = {
    **aioice.INSTANCE_HOOKED, **aiortc.INSTANCE_HOOKED, **pylibsrtp.INSTANCE_HOOKED, **aiohttp.INSTANCE_HOOKED,
}


class HookMissing(RuntimeError):
    """A library changed: an attribute camtrack hooks into is gone."""


def check_hooks() -> None:
    """Raise HookMissing naming the first hooked attribute that no longer exists."""
    for owner, name in HOOKED:
        if not hasattr(owner, name):
            raise HookMissing(f"{getattr(owner, '__name__', owner)}.{name} is gone: camtrack's hooks "
                              "into aiortc/aioice/aiohttp need updating for this version")
