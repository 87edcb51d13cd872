"""A WHEP viewer for the tests: a plain aiortc peer that posts its offer to camtrack's /whep."""

from __future__ import annotations

import asyncio

import aiohttp
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

SDP = {"Content-Type": "application/sdp"}


async def make_offer(*codecs: str) -> tuple[RTCPeerConnection, str]:
    """An aiortc peer's recvonly video offer with only `codecs` (mime subtypes, in that order; none:
    aiortc's own list, VP8 first)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver("video", direction="recvonly")
    if codecs:
        capabilities = RTCRtpSender.getCapabilities("video").codecs
        transceiver.setCodecPreferences([c for name in codecs for c in capabilities
                                         if c.mimeType.lower() == f"video/{name}".lower()])
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def whep_url(url: str, query: str = "") -> str:
    """The /whep endpoint beside a `serve` fixture's /ws URL, with `query` (say "?tier=low")."""
    return url.removesuffix("/ws") + "/whep" + query


async def whep(url: str, http: aiohttp.ClientSession, *codecs: str,
               query: str = "") -> tuple[RTCPeerConnection, str, asyncio.Future[MediaStreamTrack]]:
    """A WHEP viewer offering only `codecs` (none: aiortc's own list) to `url` (a `serve` fixture's
    /ws URL) + `query`: its peer, the answer, its track (a future). Asserts it was answered."""
    pc, sdp = await make_offer(*codecs)
    track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
    pc.on("track", lambda t: track.done() or track.set_result(t))
    async with http.post(whep_url(url, query), data=sdp, headers=SDP) as r:
        assert r.status == 201, await r.text()
        answer = await r.text()
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return pc, answer, track
