"""The Janus scenario, run inside a network namespace of its own (see test_janus.py):
camtrack publishes to a real Janus, a real aiortc subscriber watches through Janus, Janus is
restarted, publishing resumes by itself. Prints one JSON line with what it saw."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from camtrack import Config, create_app
from camtrack.app import CAMERAS
from camtrack.client import Viewer
from camtrack.outputs.janus import JanusPublisher

from .janus_server import ROOM, Janus
from .netns import SERVER_ADDRESS


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def subscribe(url: str, count: int, display: str) -> dict:
    """Watch the room's publisher named `display` through Janus with a plain aiortc peer."""
    tx = iter(range(10**6))

    async def call(http, path, body):
        async with http.post(url + path, json={**body, "transaction": str(next(tx))}) as r:
            reply = await r.json(content_type=None)
        assert reply["janus"] != "error", reply
        return reply

    async def event(http, session):
        while True:
            async with http.get(f"{url}/{session}", params={"maxev": "1"}) as r:
                reply = await r.json(content_type=None)
            for item in reply if isinstance(reply, list) else [reply]:
                if item.get("janus") == "event" and item.get("jsep"):
                    return item

    async with aiohttp.ClientSession() as http:
        session = (await call(http, "", {"janus": "create"}))["data"]["id"]
        handle = (await call(http, f"/{session}", {"janus": "attach", "plugin": "janus.plugin.videoroom"}))["data"]["id"]
        path = f"/{session}/{handle}"
        listing = await call(http, path, {"janus": "message", "body": {"request": "listparticipants", "room": ROOM}})
        everyone = [p for p in listing["plugindata"]["data"]["participants"] if p.get("publisher")]
        publishers = [p for p in everyone if p.get("display") == display]
        assert publishers, listing
        await call(http, path, {"janus": "message", "body": {
            "request": "join", "ptype": "subscriber", "room": ROOM, "streams": [{"feed": publishers[0]["id"]}]}})
        offer = (await asyncio.wait_for(event(http, session), 20))["jsep"]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        track = asyncio.get_running_loop().create_future()
        pc.on("track", lambda t: t.kind == "video" and not track.done() and track.set_result(t))
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        await call(http, path, {"janus": "message", "body": {"request": "start"},
                                "jsep": {"type": "answer", "sdp": pc.localDescription.sdp}})
        await call(http, path, {"janus": "trickle", "candidate": {"completed": True}})
        try:
            video = await asyncio.wait_for(track, 20)
            frames = [await asyncio.wait_for(video.recv(), 20) for _ in range(count)]
        finally:
            await pc.close()
            await call(http, f"/{session}", {"janus": "destroy"})
    return {"frames": len(frames), "sizes": sorted({(f.width, f.height) for f in frames}),
            "display": publishers[0].get("display"), "publishers": sorted(p.get("display") for p in everyone)}


async def main(workdir: Path, codec: str) -> dict:
    janus = Janus(workdir / "janus", codec)
    janus.start()
    base = Config(host="127.0.0.1", port=0, source="pattern", width=320, height=240, codec=codec,
                  publish=f"janus:{janus.url}", janus_room=ROOM, ice_addresses=[SERVER_ADDRESS])
    # two cameras, each its own feed in the room
    config = Config(**{**base.__dict__, "cameras": [base.camera("front", "pattern"),
                                                     base.camera("back", "pattern", width=256, height=192)]})
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    camera = app[CAMERAS].first
    publisher: JanusPublisher = camera.publisher
    back: JanusPublisher = app[CAMERAS].by_name["back"].publisher
    result: dict = {}
    try:
        await until(lambda: publisher.state == back.state == "publishing", 30, "publishing")
        result["first"] = await subscribe(janus.url, 30, "front")
        result["back"] = await subscribe(janus.url, 10, "back")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                result["healthz"] = (await r.json())["sources"]["front"]["janus"]

        janus.stop()
        await until(lambda: publisher.state == "retrying", 30, "the publisher to notice")
        # local viewers are not affected while Janus is away
        viewer = Viewer(f"http://127.0.0.1:{port}/ws")
        await viewer.connect()
        result["local_frames_while_janus_down"] = len(await viewer.frames(20))
        await viewer.close()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                result["metrics_while_down"] = [line for line in (await r.text()).splitlines()
                                                if line.startswith("camtrack_janus")]

        janus.start()
        await until(lambda: publisher.state == "publishing" and publisher.publishes >= 2, 60, "republishing")
        await until(lambda: back.state == "publishing", 60, "the second camera to republish")
        result["after_restart"] = await subscribe(janus.url, 30, "front")
        result["publishes"], result["failures"] = publisher.publishes, publisher.failures

        # a wrong room: a clear error, retried, and the server goes on
        wrong = JanusPublisher(camera, janus.url, 9999, retry_min=0.2, retry_max=0.5)
        wrong.start()
        await until(lambda: wrong.failures >= 2, 20, "the wrong room to fail")
        result["wrong_room"] = {"state": wrong.state, "last_error": wrong.last_error}
        await wrong.stop()
        # an address where nothing answers
        nowhere = JanusPublisher(camera, "http://127.0.0.1:9/janus", ROOM, retry_min=0.2, retry_max=0.5)
        nowhere.start()
        await until(lambda: nowhere.failures >= 2, 20, "an unreachable Janus to fail")
        result["unreachable"] = {"state": nowhere.state, "last_error": nowhere.last_error}
        await nowhere.stop()
        # a Janus that accepts the connection and never answers
        silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
        silent_port = silent.sockets[0].getsockname()[1]
        hanging = JanusPublisher(camera, f"http://127.0.0.1:{silent_port}/janus", ROOM, retry_min=0.2,
                                 retry_max=0.5, request_timeout=0.5)
        hanging.start()
        await until(lambda: hanging.failures >= 2, 20, "a silent Janus to time out")
        result["silent"] = {"state": hanging.state, "last_error": hanging.last_error}
        await hanging.stop()
        silent.close()
        result["still_publishing"] = publisher.state == "publishing"
    except BaseException:
        print(janus.log(), file=sys.stderr)
        raise
    finally:
        await runner.cleanup()
        janus.stop()
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from camtrack.outputs.webrtc.ice import restrict_host_addresses

    restrict_host_addresses([SERVER_ADDRESS])
    print(json.dumps(asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))))
