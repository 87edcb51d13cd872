"""WHEP, spoken by a client written here from the RFC (aiohttp + a plain aiortc peer)."""

from __future__ import annotations

import asyncio

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from camtrack.app import CAMERAS

from .conftest import eventually


async def offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def base(url: str) -> str:
    return url.removesuffix("/ws")


async def test_whep_session_lifecycle(serve):
    url, app = await serve(width=320, height=240, codec="vp8")
    camera = app[CAMERAS].first
    pc, sdp = await offer()
    track = asyncio.get_running_loop().create_future()
    pc.on("track", lambda t: track.done() or track.set_result(t))
    async with aiohttp.ClientSession() as http:
        async with http.post(base(url) + "/whep", data=sdp, headers={"Content-Type": "application/sdp"}) as r:
            assert r.status == 201, await r.text()
            assert r.content_type == "application/sdp"
            location = r.headers["Location"]
            assert location.startswith("/cameras/default/whep/")
            assert "Link" not in r.headers  # no ICE servers configured
            answer = await r.text()
        assert "VP8/90000" in answer and "a=candidate:" in answer
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        video = await asyncio.wait_for(track, 20)
        frames = [await asyncio.wait_for(video.recv(), 20) for _ in range(30)]
        assert all((f.width, f.height) == (320, 240) for f in frames)
        assert len(camera.viewers["whep"]) == 1
        # the same shared encoder as the websocket viewers
        assert len(camera.encoder.consumers) == 1

        async with http.delete(base(url) + location) as r:
            assert r.status == 200
        async with http.delete(base(url) + location) as r:
            assert r.status == 404
        await eventually(lambda: not camera.viewers["whep"] and not camera.encoder.consumers)
    await pc.close()
    await eventually(lambda: not camera.stream.running)


async def test_whep_errors(serve):
    url, app = await serve(width=320, height=240, max_viewers=1, token="t0k", allow_origins=["https://player.example"],
                           ice_servers=["stun:192.0.2.10:3478", "turn:u:p@192.0.2.11:3478"])
    endpoint = base(url) + "/whep"
    auth = {"Authorization": "Bearer t0k"}
    sdp_headers = {"Content-Type": "application/sdp", **auth}
    async with aiohttp.ClientSession() as http:
        async with http.options(endpoint, headers={"Origin": "https://player.example",
                                                   "Access-Control-Request-Method": "POST"}) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "https://player.example"  # listed
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
            assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
        async with http.post(endpoint, data="v=0", headers={"Content-Type": "text/plain", **auth}) as r:
            assert r.status == 415
        async with http.post(endpoint, data="not sdp", headers=sdp_headers) as r:
            assert r.status == 400 and "offer" in await r.text()
        async with http.post(endpoint, data="v=0", headers={"Content-Type": "application/sdp"}) as r:
            assert r.status == 401
        async with http.post(endpoint, data="v=0", headers={"Content-Type": "application/sdp",
                                                            "Authorization": "Bearer nope"}) as r:
            assert r.status == 401
        async with http.post(base(url) + "/cameras/nope/whep", data="v=0", headers=sdp_headers) as r:
            assert r.status == 404
        # one viewer fills the server; the next is refused with 503
        pc, sdp = await offer()
        async with http.post(endpoint, data=sdp, headers=sdp_headers) as r:
            assert r.status == 201
            location = r.headers["Location"]
            links = r.headers.getall("Link")
            assert links == ['<stun:192.0.2.10:3478>; rel="ice-server"',
                             '<turn:192.0.2.11:3478>; rel="ice-server"; username="u"; credential="p"; '
                             'credential-type="password"']
            answer = await r.text()
        # it fills the server once connected (an answered offer is only pending)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await eventually(lambda: app[CAMERAS].viewer_count == 1)
        pc2, sdp2 = await offer()
        async with http.post(endpoint, data=sdp2, headers=sdp_headers) as r:
            assert r.status == 503
        async with http.patch(base(url) + location, data="a=end-of-candidates",
                              headers={"Content-Type": "application/trickle-ice-sdpfrag", **auth}) as r:
            assert r.status == 405
        async with http.delete(base(url) + location) as r:
            assert r.status == 401
        async with http.delete(base(url) + location, headers=auth) as r:
            assert r.status == 200
    await pc.close()
    await pc2.close()
    await eventually(lambda: app[CAMERAS].viewer_count == 0)


async def test_whep_offer_arriving_in_pieces(serve):
    """A body split over TCP segments (any real network) is read whole."""
    url, app = await serve(width=320, height=240)
    pc, sdp = await offer()
    host, port = url.split("//")[1].split("/")[0].split(":")
    body = sdp.encode()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST /whep HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/sdp\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body[: len(body) // 2])
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.write(body[len(body) // 2:])
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 20)
    writer.close()
    assert status.startswith(b"HTTP/1.1 201"), status
    await pc.close()
    await eventually(lambda: app[CAMERAS].viewer_count == 0, timeout=30)


async def test_an_rsa_certificate_viewer_is_answered_passive_and_plays(serve):
    """A WHEP viewer whose DTLS certificate is RSA (as GStreamer's webrtcbin's; tests/test_gstreamer.py
    has the real one) offers actpass: camtrack answers passive, so the viewer opens the handshake
    and camtrack's ECDSA suites suffice."""
    from .test_hooks import rsa_viewer

    url, app = await serve(width=320, height=240, codec="vp8")
    pc = rsa_viewer()
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    assert "a=setup:actpass" in pc.localDescription.sdp
    track = asyncio.get_running_loop().create_future()
    pc.on("track", lambda t: track.done() or track.set_result(t))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(base(url) + "/whep", data=pc.localDescription.sdp,
                                 headers={"Content-Type": "application/sdp"}) as r:
                assert r.status == 201, await r.text()
                answer = await r.text()
        assert "a=setup:passive" in answer.splitlines()
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        video = await asyncio.wait_for(track, 20)
        frames = [await asyncio.wait_for(video.recv(), 20) for _ in range(5)]
        assert (frames[-1].width, frames[-1].height) == (320, 240)
    finally:
        await pc.close()
