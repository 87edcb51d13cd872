"""Worker processes (--workers 2): real aiortc viewers over /ws and WHEP, served by two worker
processes while the camera is opened once and each frame encoded once in the main process."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from camtrack.app import CAMERAS, ICE
from camtrack.client import Viewer
from camtrack.media.feeds import Transport
from camtrack.workers.pool import WorkerPeers, WorkerPool

from .conftest import eventually

ROOT = Path(__file__).resolve().parent.parent


async def connect_in_turn(viewers: list[Viewer], frames: int) -> None:
    """Connect `viewers` one after the other (the least-loaded worker takes each: they spread over
    the workers), then wait until each has decoded `frames` pictures."""
    for viewer in viewers:
        await viewer.connect()
    await asyncio.gather(*(v.frames(frames, timeout=60) for v in viewers))


def pool_of(app) -> WorkerPool:
    peers = app[ICE].peers  # the app's peer factory: the pool's, once it started
    assert isinstance(peers, WorkerPeers)
    return peers.pool


async def whep_viewer(base: str, http: aiohttp.ClientSession) -> tuple[RTCPeerConnection, asyncio.Future]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = asyncio.get_running_loop().create_future()
    pc.on("track", lambda t: track.done() or track.set_result(t))
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(base + "/whep", data=pc.localDescription.sdp,
                         headers={"Content-Type": "application/sdp"}) as r:
        assert r.status == 201, await r.text()
        answer = await r.text()
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return pc, track


async def test_viewers_on_two_workers_share_one_camera_and_one_encoder(serve):
    # (keyframes every 30 s: the ones seen here are the ones asked for)
    url, app = await serve(width=320, height=240, workers=2, ice_addresses=["127.0.0.1"], keyframe_interval=30)
    camera = app[CAMERAS].first
    pool = pool_of(app)
    assert [w.ready for w in pool.workers] == [True, True]
    viewers = [Viewer(url) for _ in range(3)]
    async with aiohttp.ClientSession() as http:
        try:
            await asyncio.gather(*(v.connect() for v in viewers))
            pc, track = await whep_viewer(url.removesuffix("/ws"), http)
            results = await asyncio.gather(*(v.frames(30, timeout=60) for v in viewers))
            whep_frames = [await asyncio.wait_for((await asyncio.wait_for(track, 20)).recv(), 20) for _ in range(30)]
            for frames in [*results, whep_frames]:
                assert all((f.width, f.height) == (320, 240) for f in frames)
                pts = [f.pts for f in frames]
                assert pts == sorted(set(pts))
            # least loaded: two viewers on each worker, and every one counted as a viewer here
            assert sorted(w.load for w in pool.workers) == [2, 2]
            await eventually(lambda: len(camera.viewers["websocket"]) == 3 and len(camera.viewers["whep"]) == 1)
            # the camera opened once, the encoder ran once, and its one reader per worker is the pump
            assert camera.stream.runs == 1 and camera.encoder is not None and camera.encoder.stats.runs == 1
            assert len(camera.encoder.consumers) == 2
            frames_now = camera.encoder.stats.frames
            # each worker got each packet once (not once per viewer): at most what was encoded ...
            for worker in pool.workers:
                assert worker.sent["default"] <= frames_now
            # ... and received what was sent (its counters come back once a second)
            await eventually(lambda: all(w.stats.get("received", {}).get("default", 0) >= 30 for w in pool.workers))
            for worker in pool.workers:
                assert worker.stats["received"]["default"] <= worker.sent["default"]
            # what the workers sent their viewers reaches the main process's meters (/metrics)
            await eventually(lambda: camera.meters["websocket"].frames >= 90 and camera.meters["whep"].frames >= 30)
            # ... and so do their viewers' capture-to-wire ages, and what their sends cost (admission)
            await eventually(lambda: camera.meters["websocket"].wire_age.count >= 60
                             and camera.meters["whep"].wire_age.count >= 20)
            load = app[CAMERAS].load
            await eventually(lambda: len(load._fresh_reports()) == 2)
            assert all(0 < cost < 0.01 and 0 < cpu < 0.1 for _, cost, cpu in load._fresh_reports())
            async with http.get(url.removesuffix("/ws") + "/healthz") as r:
                health = await r.json()
            assert health["viewers"] == 4 and [w["peers"] for w in health["workers"]] == [2, 2]
            async with http.get(url.removesuffix("/ws") + "/metrics") as r:
                metrics = await r.text()
            assert 'camtrack_worker_peers{worker="1"} 2.0' in metrics and 'camtrack_worker_up{worker="2"} 1.0' in metrics
            assert 'camtrack_worker_packets_sent_total{camera="default",worker="1"}' in metrics
            # a viewer joining long after the last keyframe: its worker asks the main process's encoder for one
            requests = [w.keyframe_requests for w in pool.workers]
            forced = camera.encoder.stats.forced_keyframes
            late = Viewer(url)
            viewers.append(late)
            await late.connect()
            await late.frames(5, timeout=30)
            assert sum(w.keyframe_requests for w in pool.workers) > sum(requests)
            assert camera.encoder.stats.forced_keyframes > forced
            await pc.close()
        finally:
            await asyncio.gather(*(v.close() for v in viewers))
    await eventually(lambda: not camera.viewers["websocket"] and not camera.viewers["whep"])
    await eventually(lambda: all(w.load == 0 and not w.pumps for w in pool.workers))
    # and the workers themselves hold no peer any more (what they report once a second)
    await eventually(lambda: all(w.stats.get("peers") == 0 for w in pool.workers))
    await eventually(lambda: not camera.stream.running)


async def test_a_killed_worker_takes_only_its_viewers_and_is_restarted(serve):
    url, app = await serve(width=320, height=240, workers=2, ice_addresses=["127.0.0.1"])
    camera = app[CAMERAS].first
    pool = pool_of(app)
    viewers = [Viewer(url) for _ in range(2)]
    try:
        await connect_in_turn(viewers, 5)
        assert [w.load for w in pool.workers] == [1, 1]
        victim = pool.workers[0]
        old_pid = victim.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        # its viewer is told (bye) and let go; the other one keeps playing
        assert (await viewers[0].receive("bye", timeout=20))["type"] == "bye"
        await viewers[1].frames(30, timeout=30)
        await eventually(lambda: len(camera.viewers["websocket"]) == 1)
        await eventually(lambda: victim.ready and victim.pid != old_pid, timeout=30)
        assert not running(old_pid)
        # the restarted worker takes viewers again (it is the least loaded)
        again = Viewer(url)
        viewers.append(again)
        await again.connect()
        await again.frames(5, timeout=30)
        assert victim.load == 1
        assert camera.stream.runs == 1
    finally:
        await asyncio.gather(*(v.close(bye=False) for v in viewers), return_exceptions=True)


async def test_by_default_workers_start_when_the_main_process_is_busy_and_stop_when_idle(serve, monkeypatch):
    """--workers 0 (the default): viewers are served here until this process is busy; then a
    worker starts (newcomers meanwhile stay here), takes the next newcomers, and stops again after
    IDLE_STOP without viewers. The thresholds are lowered here: one viewer makes it busy."""
    from camtrack import Config
    from camtrack.media import admission
    from camtrack.outputs.webrtc.peer import Peer
    from camtrack.workers import pool as pool_module
    from camtrack.workers.pool import worker_count

    assert Config().workers == 0 and worker_count(Config()) == len(os.sched_getaffinity(0))
    assert worker_count(Config(workers=1)) == 1
    monkeypatch.setattr("camtrack.app.worker_count", lambda config: 2)  # (whatever this machine has)
    url, app = await serve(width=320, height=240)
    pool = pool_of(app)
    assert pool.on_demand and not any(w.running for w in pool.workers) and pool.describe() == []
    # a few viewers: all here, no worker process
    first, second = Viewer(url), Viewer(url)
    await asyncio.gather(first.connect(), second.connect())
    await asyncio.gather(first.frames(5), second.frames(5))
    assert pool.local_viewers() == 2 and not any(w.running for w in pool.workers)
    assert all(isinstance(s.peer, Peer) for s in app[CAMERAS].first.viewers[Transport.WEBSOCKET])

    # busy now (at 2 viewers of its own, whatever their sends cost): the next newcomer starts a worker and
    # stays here while it starts, the one after goes to it
    monkeypatch.setattr(admission, "SPILL_VIEWERS", 2)
    monkeypatch.setattr(admission, "SPILL_SEND_CPU", 0.0)
    monkeypatch.setattr(pool_module, "IDLE_STOP", 1.0)
    monkeypatch.setattr(pool_module, "IDLE_CHECK", 0.2)
    third = Viewer(url)
    await third.connect()
    await third.frames(5)
    assert pool.local_viewers() == 3
    await eventually(lambda: pool.workers[0].ready, timeout=30)
    assert not pool.workers[1].running  # one at a time
    fourth = Viewer(url)
    await fourth.connect()
    await fourth.frames(10, timeout=30)
    assert pool.workers[0].load == 1 and pool.local_viewers() == 3
    assert [w["peers"] for w in pool.describe()] == [1]
    pid = pool.workers[0].pid
    assert pid is not None and running(pid)
    # the worker's viewer leaves: after IDLE_STOP the worker stops; the others watch on
    await fourth.close()
    await eventually(lambda: not pool.workers[0].running and not running(pid), timeout=20)
    await asyncio.gather(*(v.frames(10, timeout=30) for v in (first, second, third)))
    await asyncio.gather(*(v.close() for v in (first, second, third)))


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is not)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sigterm_ends_the_workers_promptly():
    """A real server process with two workers and a viewer: SIGTERM, and every process is gone."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py"), "--host", "127.0.0.1", "--port", str(port), "--source", "pattern",
         "--width", "320", "--height", "240", "--ice-address", "127.0.0.1", "--webrtc-port", "0",
         "--workers", "2", "--log-level", "warning"], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        workers: list[int] = []
        while len(workers) < 2:
            assert time.monotonic() < deadline and server.poll() is None, "workers did not start"
            workers = children(server.pid)
            time.sleep(0.1)
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "server did not start"
                time.sleep(0.1)

        async def watch() -> None:
            viewer = Viewer(f"http://127.0.0.1:{port}/ws")
            await viewer.connect()
            await viewer.frames(5, timeout=30)
            started = time.monotonic()
            server.send_signal(signal.SIGTERM)
            await viewer.receive("bye", timeout=10)
            assert time.monotonic() - started < 5
            await viewer.close(bye=False)

        asyncio.run(watch())
        assert server.wait(timeout=10) == 0
        # (the server reaped them: a worker still running would be an orphan now)
        assert [pid for pid in workers if running(pid)] == []
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


async def test_workers_share_the_one_webrtc_port(serve):
    """Two workers' viewers all reach the one --webrtc-port: the workers send from the main
    process's socket, hold no UDP socket of their own, and are handed their peers' datagrams."""
    import re

    from .test_udpmux import free_udp_port, inode, udp_inodes_of_this_process

    port = free_udp_port()
    url, app = await serve(width=320, height=240, workers=2, webrtc_port=port, ice_addresses=["127.0.0.1"])
    mux = app[ICE].mux
    assert mux is not None and mux.port == port and mux.sock is not None
    viewers = [Viewer(url) for _ in range(4)]
    try:
        await connect_in_turn(viewers, 10)
        ports = {int(p) for v in viewers for p in re.findall(r"a=candidate:\S+ 1 udp \d+ \S+ (\d+) typ host", v.answer_sdp)}
        assert ports == {port}
        pool = pool_of(app)
        assert [w["port"] for w in pool.describe()] == [port, port]
        assert [w["peers"] for w in pool.describe()] == [2, 2]  # (the least loaded takes each)
        # the main process holds each worker peer's ufrag and the address it proved, and hands over
        # what arrives there; no peer of its own is on the socket
        assert mux.foreign == 4 and mux.peers == 0 and mux.routes >= 4
        assert mux.stats.forwarded > 0 and mux.stats.strangers == 0
        # a forged check for a worker's peer (its ufrag, the wrong password) from a new address is
        # checked here against the password the worker claimed the ufrag with: dropped, counted for
        # that worker, never handed over; and it adds no route
        import socket as sockets

        from aioice import stun

        ufrag = re.search(r"a=ice-ufrag:(\S+)", viewers[0].answer_sdp)[1]
        routes = mux.routes
        forged = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        forged.attributes["USERNAME"] = f"{ufrag}:someone"
        forged.add_message_integrity(b"not the password")
        forged.add_fingerprint()
        worker = next(w for w in pool.workers if ufrag in w.ufrags)
        with sockets.socket(sockets.AF_INET, sockets.SOCK_DGRAM) as attacker:
            attacker.bind(("127.0.0.1", 0))
            attacker.sendto(bytes(forged), ("127.0.0.1", port))
            await eventually(lambda: mux.stats.forged == 1)
            assert worker.refused["forged"] == 1
            attacker.sendto(b"\x17junk", ("127.0.0.1", port))  # and from that address, nothing is routed
            await eventually(lambda: mux.stats.strangers == 1)
        assert mux.routes == routes
        await asyncio.gather(*(v.frames(10, timeout=30) for v in viewers))
        # the workers hold the one socket and no other UDP socket
        shared = inode(mux.sock)
        for worker in pool.workers:
            assert worker.pid is not None
            assert udp_inodes_of_this_process(worker.pid) == {shared}
        # a worker that dies gives its peers' ufrags and routes back; the other's viewers play on
        dead = pool.workers[0]
        dead_ufrags = set(dead.ufrags)
        assert len(dead_ufrags) == 2
        os.kill(dead.pid, signal.SIGKILL)
        await eventually(lambda: mux.foreign == 2 and not dead_ufrags & set(mux._foreign), timeout=20)
        survivors = [v for v in viewers if re.search(r"a=ice-ufrag:(\S+)", v.answer_sdp)[1] not in dead_ufrags]
        assert len(survivors) == 2
        await asyncio.gather(*(v.frames(10, timeout=30) for v in survivors))
        # hanging up gives the ufrags back
        await asyncio.gather(*(v.close() for v in survivors))
        await eventually(lambda: mux.foreign == 0 and mux.routes == 0, timeout=20)
    finally:
        await asyncio.gather(*(v.close(bye=False) for v in viewers))


async def test_a_passed_through_camera_on_workers(serve, tmp_path):
    """The camera's own H.264 relayed to the workers: a viewer joining mid-GOP on the other worker
    starts from the camera's newest keyframe (no join bridge in a worker) and plays."""
    from camtrack.media.passthrough import PassthroughFeed

    from .test_passthrough import FPS, write_h264

    source = str(write_h264(tmp_path / "camera.mp4", "baseline"))
    url, app = await serve(source=source, mode="passthrough", width=320, height=240, workers=2,
                           ice_addresses=["127.0.0.1"])
    camera = app[CAMERAS].first
    feed = camera.feed
    assert isinstance(feed, PassthroughFeed)
    first, late = Viewer(url), Viewer(url)
    try:
        await first.connect()
        await first.frames(10, timeout=30)
        await eventually(lambda: len(feed._ring.since(lambda p: p.keyframe)) > FPS, timeout=20)
        await late.connect()
        frames = await late.frames(30, timeout=20)
        assert (frames[-1].width, frames[-1].height) == (320, 240)
        assert sorted(w.load for w in pool_of(app).workers) == [1, 1]
        assert camera.decoder is not None and camera.decoder.frames == 0  # nothing decoded, nothing encoded
    finally:
        await asyncio.gather(first.close(), late.close())


async def test_a_stalled_worker_is_skipped_ahead_not_queued_for(serve, monkeypatch):
    """A worker that stops reading (SIGSTOP) holds up nobody and queues nothing past a bound; once
    it reads again it gets the newest packets and its viewer plays on."""
    from camtrack.workers import pool as pool_module

    monkeypatch.setattr(pool_module, "SOCKET_BUFFER", 16 * 1024)  # (small: the bound is reached in a moment)
    monkeypatch.setattr(pool_module, "WATCHDOG", 60.0)  # (stopped here on purpose: not to be killed as stuck)
    url, app = await serve(width=320, height=240, workers=2, ice_addresses=["127.0.0.1"])
    camera = app[CAMERAS].first
    pool = pool_of(app)
    viewers = [Viewer(url) for _ in range(2)]
    try:
        await connect_in_turn(viewers, 5)
        stalled = pool.workers[0]
        assert stalled.pid is not None
        os.kill(stalled.pid, signal.SIGSTOP)
        try:
            # the socket fills, then the writer's buffer up to its high-water mark: the pump waits there
            await eventually(lambda: stalled.buffered >= 64 * 1024, timeout=30)
            frames = camera.encoder.stats.frames
            await eventually(lambda: camera.encoder.stats.frames > frames + 30)
            assert stalled.buffered < 64 * 1024 + 64 * 1024  # the writer's high-water mark and one packet
            await viewers[1].frames(30, timeout=20)  # the other worker's viewer plays on meanwhile
        finally:
            os.kill(stalled.pid, signal.SIGCONT)
        await viewers[0].frames(30, timeout=20)
        assert stalled.skipped["default"] > 0  # it got the newest packets, not the backlog
    finally:
        await asyncio.gather(*(v.close() for v in viewers))


def test_workers_exit_when_the_main_process_is_killed():
    """SIGKILL leaves the main process no time to stop them: its workers see their socket close and go."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py"), "--host", "127.0.0.1", "--port", str(port), "--source", "pattern",
         "--ice-address", "127.0.0.1", "--webrtc-port", "0", "--workers", "2", "--log-level", "warning"], cwd=ROOT)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while len(workers) < 2:
            assert time.monotonic() < deadline and server.poll() is None, "workers did not start"
            workers = children(server.pid)
            time.sleep(0.1)
        while True:  # ready: the server listens once every worker has started
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "server did not start"
                time.sleep(0.1)
    finally:
        server.kill()
        server.wait()
    deadline = time.monotonic() + 10
    while any(running(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived the main process"
        time.sleep(0.1)


async def test_max_viewers_counts_the_viewers_of_every_worker(serve):
    url, app = await serve(width=320, height=240, workers=2, max_viewers=2, ice_addresses=["127.0.0.1"])
    camera = app[CAMERAS].first
    viewers = [Viewer(url) for _ in range(2)]
    try:
        await connect_in_turn(viewers, 5)
        await eventually(lambda: len(camera.viewers["websocket"]) == 2)
        assert sorted(w.load for w in pool_of(app).workers) == [1, 1]
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            assert await ws.receive_json(timeout=10) == {"type": "error", "message": "server full"}
            closing = await ws.receive(timeout=10)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1013
    finally:
        await asyncio.gather(*(v.close() for v in viewers))


async def test_a_stuck_worker_is_killed_and_restarted(serve, monkeypatch):
    """A worker whose event loop says nothing (SIGSTOP stands for a stuck one) past the watchdog is
    killed: its viewer is let go, the other plays on, and it is started again."""
    from camtrack.workers import pool as pool_module

    monkeypatch.setattr(pool_module, "WATCHDOG", 3.0)  # (it says something every second)
    url, app = await serve(width=320, height=240, workers=2, ice_addresses=["127.0.0.1"])
    pool = pool_of(app)
    viewers = [Viewer(url) for _ in range(2)]
    try:
        await connect_in_turn(viewers, 5)
        stuck = pool.workers[0]
        old_pid = stuck.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGSTOP)
        await viewers[0].receive("bye", timeout=20)
        await viewers[1].frames(30, timeout=20)
        await eventually(lambda: stuck.ready and stuck.pid != old_pid, timeout=30)
        assert not running(old_pid)
    finally:
        await asyncio.gather(*(v.close(bye=False) for v in viewers), return_exceptions=True)


def test_a_relayed_keyframe_the_encoder_would_answer_with_is_a_start(monkeypatch):
    """A worker's newcomer starts from a relayed keyframe young enough that the main process's
    encoder would answer a request with it (KEYFRAME_ANSWERS), instead of asking in vain and
    waiting for the next periodic keyframe; an older one is asked for again."""
    from camtrack.media.encoder import KEYFRAME_ANSWERS
    from camtrack.media.packet import CodecInfo
    from camtrack.workers import relay
    from camtrack.workers.wire import WirePacket

    asked: list[float] = []
    feed = relay.RelayedFeed("default", CodecInfo("h264", 320, 240), "encoder", 32, lambda: asked.append(1))
    now = [1000.0]
    monkeypatch.setattr(relay.time, "monotonic", lambda: now[0])
    feed.add(WirePacket("default", 1, 0, 0.0, True, b"\x00\x00\x00\x01\x65"))
    feed.add(WirePacket("default", 2, 3000, 0.0, False, b"\x00\x00\x00\x01\x41"))
    now[0] += KEYFRAME_ANSWERS * 0.8  # (0.2 s: the encoder takes it as its answer and forces none)
    assert [p.seq for p in feed.start_packets()] == [1, 2] and not asked
    now[0] += KEYFRAME_ANSWERS * 0.4
    assert feed.start_packets() == [] and asked == [1]


async def test_a_worker_skips_a_message_it_cannot_read_and_keeps_its_viewers(serve):
    """A frame longer than the wire takes, one of an unknown kind, a control message that does not
    unpickle: each skipped whole by the worker, which reads on; its viewer keeps playing."""
    from camtrack.workers import wire

    url, app = await serve(width=320, height=240, workers=2, ice_addresses=["127.0.0.1"])
    pool = pool_of(app)
    viewer = Viewer(url)
    try:
        await connect_in_turn([viewer], 5)
        worker = next(w for w in pool.workers if w.load == 1)
        pid, starts = worker.pid, worker.starts
        header = struct.Struct(">IB")
        worker.write(header.pack(wire.MAX_FRAME + 1, wire.CONTROL[0]) + bytes(wire.MAX_FRAME))
        worker.write(header.pack(4, ord("X")) + b"abc")
        worker.write(header.pack(6, wire.CONTROL[0]) + b"\x80junk")
        await worker.drain()
        await viewer.frames(30, timeout=30)
        assert worker.ready and worker.pid == pid and worker.starts == starts and running(pid)
    finally:
        await viewer.close()


async def test_a_worker_keeps_a_passed_through_cameras_processing_running_only_for_data_channels(serve, tmp_path):
    """A passed-through camera with a data function, its viewers on workers: a viewer without a data
    channel (a WHEP or GStreamer viewer) does not keep the decoder and the function running for
    nobody; one with a channel does, and gets the data; when it leaves, they stop again."""
    from .test_passthrough import write_h264

    source = str(write_h264(tmp_path / "camera.mp4", "baseline"))
    url, app = await serve(source=source, mode="passthrough", width=320, height=240, workers=2,
                           ice_addresses=["127.0.0.1"], process_function=lambda frame, info: {"frame": info.frame})
    camera = app[CAMERAS].first
    processing = camera.processing
    assert processing is not None
    plain, reading = Viewer(url), Viewer(url, data=True)
    try:
        await connect_in_turn([plain], 10)
        assert any(processing.camera in w.result_pumps for w in pool_of(app).workers)
        await asyncio.sleep(1.0)
        assert not processing.running and processing.stats.calls == 0
        await reading.connect()
        await reading.frames(10, timeout=30)
        await eventually(lambda: any(m["type"] == "data" for m in reading.messages), timeout=20)
        assert processing.running
        await reading.close()
        await eventually(lambda: not processing.running, 10)
        await plain.frames(10, timeout=20)
    finally:
        await asyncio.gather(plain.close(), reading.close(), return_exceptions=True)


async def test_a_result_pump_whose_stage_stops_ends_quietly_and_leaves_its_worker(serve):
    """The processing stage stopping under a worker's relay (ProcessingClosed) ends the pump without
    an error and takes it out of the worker's pumps: the worker's next viewer starts one again."""
    url, app = await serve(width=320, height=240, fps=20, workers=2, ice_addresses=["127.0.0.1"],
                           process_function=lambda frame, info: {"frame": info.frame})
    camera = app[CAMERAS].first
    processing = camera.processing
    assert processing is not None
    viewer = Viewer(url, data=True)
    try:
        await viewer.connect()
        await viewer.frames(10, timeout=30)
        await eventually(lambda: any(m["type"] == "data" for m in viewer.messages), timeout=20)
        worker = next(w for w in pool_of(app).workers if camera.name in w.result_pumps)
        pump = worker.result_pumps[camera.name]
        # (as at shutdown: the camera's outputs, the events watcher among them, stop before its stages)
        await asyncio.gather(*(output.stop() for output in camera.pipeline.outputs.values()))
        await processing.close()
        await eventually(lambda: pump._task.done(), 10)
        assert pump._task.exception() is None and camera.name not in worker.result_pumps
    finally:
        await viewer.close()
