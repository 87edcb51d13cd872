"""Random messages thrown at /ws (hypothesis): the server answers each, stays up, and a viewer
watching meanwhile drops no frame."""

from __future__ import annotations

import asyncio
import json
import threading

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camtrack import Config, create_app
from camtrack.app import CAMERAS
from camtrack.client import Viewer
from camtrack.media.reader import PacketReader
from camtrack.outputs.webrtc.ice import restrict_host_addresses

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
types = st.sampled_from(["offer", "candidate", "bye", "answer", "hello", "error", "", "OFFER"]) | st.text(max_size=10)
fields = st.fixed_dictionaries({}, optional={
    "sdp": json_scalars | st.just("v=0\r\n") | st.text(alphabet="v=om\r\n 0123456789IPN4", max_size=80),
    "candidate": json_scalars | st.just("candidate:1 1 udp 1 127.0.0.1 9 typ host"),
    "sdpMid": json_values,
    "sdpMLineIndex": json_values,
})
messages = (
    st.builds(lambda t, f: json.dumps({"type": t, **f}), types, fields)
    | json_values.map(json.dumps)
    | st.text(max_size=200)
    | st.binary(max_size=64)
)


class ServerThread:
    """A camtrack server and one watching viewer on an event loop of their own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def start(self) -> None:
        self.undo_ice = restrict_host_addresses(["127.0.0.1"])
        self.app = create_app(Config(host="127.0.0.1", port=0, source="pattern", width=320, height=240, linger=0.5,
                                        webrtc_port=0, max_loop_lag=0, send_budget=0, max_picture_age=0, max_cpu=0))
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/ws"
        self.session = aiohttp.ClientSession()
        self.watcher = Viewer(self.url)
        await self.watcher.connect()
        await self.watcher.frames(5)
        self.watcher_track = next(t for t in self.app[CAMERAS].first.encoder.consumers if isinstance(t, PacketReader))
        self.received = 0
        self.reader = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        track = await self.watcher.track
        while True:
            await track.recv()
            self.received += 1

    async def throw(self, message: str | bytes) -> None:
        """Send one message on a fresh socket; the server must answer it, or close on a bye."""
        async with self.session.ws_connect(self.url) as ws:
            assert (await ws.receive_json(timeout=10))["type"] == "hello"
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(message)
            reply = await ws.receive(timeout=10)
            if reply.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(reply.data)
                assert data["type"] in ("error", "bye", "answer"), data
                if data["type"] == "error":
                    assert isinstance(data["message"], str) and data["message"]
            else:
                # only a bye (or an oversized frame) may close the socket
                assert reply.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), reply

    async def stop(self) -> None:
        self.reader.cancel()
        await self.watcher.close()
        await self.session.close()
        await self.runner.cleanup()
        self.undo_ice()


@pytest.fixture(scope="module")
def server():
    server = ServerThread()
    server.call(server.start())
    yield server
    server.call(server.stop())
    server.loop.call_soon_threadsafe(server.loop.stop)
    server.thread.join(10)


@pytest.mark.timeout(300)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(message=messages)
def test_random_messages(server, message):
    before = server.received
    server.call(server.throw(message))
    assert server.watcher_track.skipped == 0, "the watching viewer dropped frames"
    assert server.watcher.pc.connectionState == "connected"
    # the watcher keeps receiving
    server.call(asyncio.wait_for(_until(lambda: server.received > before), 10))


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


def test_after_the_storm(server):
    """Every thrown socket is gone; the watcher is the only session left."""
    server.call(asyncio.wait_for(_until(lambda: server.app[CAMERAS].viewer_count == 1), 20))
