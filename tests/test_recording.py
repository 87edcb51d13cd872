"""Recording (camtrack.outputs.recording, docs/recording.md): clips of events with true pre-roll, cut
from the packets viewers get, written as fragmented MP4 and read back with PyAV and ffprobe."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import fractions
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from camtrack.app import CAMERAS, RECORDINGS
from camtrack.media.packet import CodecInfo, EncodedPacket
from camtrack.media.stamp import MODULUS, read_stamp
from camtrack.outputs.recording import Recorder, Retention, Store
from camtrack.outputs.recording.fmp4 import Fmp4Writer, parameter_sets, repair
from camtrack.outputs.recording.preroll import PreRoll
from camtrack.sources.h264 import NAL_AUD, NAL_PPS, NAL_SPS, nal_type, parse_avcc_extradata, split_avcc

from .conftest import eventually
from .test_passthrough import write_h264

#: every test here gets its clips' directory free-space floor out of the way (tmp may be small)
NO_FLOOR = {"record_min_free": 0.0}


def recorder_of(app: Any, camera: str = "default") -> Recorder:
    return app[RECORDINGS].recorders[camera]


def stamp_time(stamp: int, near: float) -> float:
    """The wall-clock time (s) of a latency stamp (ms mod 2**32), the one nearest `near`."""
    base = int(near * 1000)
    delta = (stamp - base % MODULUS) % MODULUS
    if delta >= MODULUS // 2:
        delta -= MODULUS
    return (base + delta) / 1000


#: how much earlier than the capture time the recorder compares a picture's stamp may read: the
#: pattern draws it (floored to the ms) just before the capture thread takes the frame's time, and a
#: loaded machine may pause the thread between the two (a CI run's clip ended on a picture stamped
#: 0.4 ms before its post-roll's end, the capture time that ended it being after it)
STAMP_EARLY = 0.05


def decoded_stamps(path: Path, near: float) -> list[float]:
    """The capture times the pattern stamped on every picture of the clip, in order."""
    with av.open(str(path)) as container:
        return [stamp_time(read_stamp(frame.to_ndarray(format="bgr24")), near)
                for frame in container.decode(video=0)]


def samples(path: Path) -> list[tuple[bytes, ...]]:
    """The clip's pictures as their NAL units (parameter sets and delimiters left out)."""
    with av.open(str(path)) as container:
        return [tuple(n for n in split_avcc(bytes(p)) if nal_type(n) not in (NAL_SPS, NAL_PPS, NAL_AUD))
                for p in container.demux(video=0) if p.size]


def decode_errors(path: Path) -> str:
    """What ffmpeg says (errors only) decoding every picture of the file, its own timestamps kept in
    their own time base (`-f null` would otherwise round them to the frame rate's and complain of two
    pictures captured under a frame interval apart: the capture's jitter, not the file's fault)."""
    done = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-fps_mode", "passthrough", "-enc_time_base", "-1",
                           "-f", "null", "-"],
                          capture_output=True, text=True, timeout=60)
    return done.stderr if done.returncode == 0 else f"exit {done.returncode}: {done.stderr}"


def ffprobe(path: Path) -> dict[str, Any]:
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format",
                          "-count_frames", str(path)], capture_output=True, text=True, timeout=30, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


async def wait_preroll(recorder: Recorder, seconds: float) -> None:
    """Until the pre-roll holds `seconds`. (A full pre-roll holds from `--pre-roll` to under
    `--pre-roll` plus one GOP: the oldest GOP goes when the next keyframe is `--pre-roll` old, so
    with 1 s GOPs a 2 s pre-roll spans 3 s only when a GOP came out longer than 1 s; waiting for 3 s
    failed one run in four on an idle machine.)"""
    await eventually(lambda: recorder.preroll.span >= seconds, timeout=20)


async def finished(store: Store, timeout: float = 20.0) -> list[dict[str, Any]]:
    await eventually(lambda: bool(store.clips()) and not any(c.get("recording") for c in store.clips()),
                     timeout=timeout)
    return store.clips()


@pytest.mark.slow  # (a camera recording for seconds)
async def test_a_clip_starts_pre_roll_before_its_event_and_ends_post_roll_after(serve, tmp_path):
    """The pattern's stamps: the clip's first picture was captured at least --pre-roll before the
    event's start, its last at least --post-roll after its end; the file is the encoder's H.264
    with the encoder's own parameter sets, which ffmpeg decodes without an error."""
    _, app = await serve(record=str(tmp_path), pre_roll=2.0, post_roll=1.5, keyframe_interval=1.0, **NO_FLOOR)
    recorder = recorder_of(app)
    await wait_preroll(recorder, 2.5)
    assert recorder.state == "idle" and recorder.clip is None
    started = time.time()
    recorder.event_started("doorbell-1", started, kind="doorbell")
    assert recorder.state == "recording"
    await asyncio.sleep(1.0)
    ended = time.time()
    recorder.event_ended("doorbell-1", ended)
    (clip,) = await finished(recorder.store)
    path = recorder.store.path(clip["id"])
    assert path.exists() and not recorder.store.path(clip["id"], ".mp4.part").exists()
    assert path.parent.parent.name == "default" and path.parent.name == time.strftime("%Y-%m-%d", time.gmtime())
    assert clip["events"] == ["doorbell-1"] and clip["kinds"] == ["doorbell"] and clip["protected"] is False

    stamps = decoded_stamps(path, started)
    assert stamps[0] <= started - 2.0, f"first picture {started - stamps[0]:.2f} s before the event"
    assert stamps[0] >= started - 2.0 - 1.5, "more than a GOP of pre-roll beyond the asked"
    assert stamps[-1] >= ended + 1.5 - STAMP_EARLY, f"last picture {stamps[-1] - ended:.3f} s after the end"
    # in capture order (a stamp's low bits may be misread in a picture the encoder squeezed under
    # load: a pair or two out of step is the reading's, not the order's)
    disorder = [(a, b) for a, b in zip(stamps, stamps[1:], strict=False) if b <= a]
    assert len(disorder) <= 2 and all(a - b < 0.05 for a, b in disorder), f"pictures out of order: {disorder}"
    # every picture the encoder made (it may make fewer than 30 a second on a loaded machine: it skips
    # to the newest frame then, and that is the camera's rate, not the recorder's)
    # (the shared encoder holds its last 8 packets: only an event loop stalled longer than that, on a
    # machine loaded far beyond CI's, makes the recorder skip to a keyframe, and counts it)
    assert recorder.stats.gaps <= 1, "the recorder skipped packets"
    assert len(stamps) >= 10 * (stamps[-1] - stamps[0]), "pictures missing"

    probe = ffprobe(path)
    # (and the pattern's tone beside: tests/test_recording_audio.py)
    (stream,) = [s for s in probe["streams"] if s["codec_type"] == "video"]
    assert [s["codec_name"] for s in probe["streams"]] == ["h264", "opus"]
    assert stream["codec_name"] == "h264" and (stream["width"], stream["height"]) == (640, 480)
    assert int(stream["nb_read_frames"]) == len(stamps)
    assert abs(float(probe["format"]["duration"]) - clip["duration"]) < 0.1
    # the parameter sets in the file's header are the encoder's (those of its keyframes)
    with av.open(str(path)) as container:
        _, sps, pps = parse_avcc_extradata(bytes(container.streams.video[0].codec_context.extradata))
    live = recorder.camera.packets()
    assert live is not None
    keyframe = next(p for p in recorder.preroll.since(time.time()) if p.keyframe)
    assert (sps, pps) == tuple(list(x) for x in parameter_sets(bytes(keyframe.packet)))
    assert decode_errors(path) == ""


@pytest.mark.slow  # (a camera recording for seconds)
async def test_overlapping_and_adjacent_events_make_one_clip(serve, tmp_path):
    _, app = await serve(record=str(tmp_path), pre_roll=1.0, post_roll=2.0, keyframe_interval=1.0, **NO_FLOOR)
    recorder = recorder_of(app)
    await wait_preroll(recorder, 1.5)
    recorder.event_started("a", time.time(), kind="motion")
    await asyncio.sleep(0.5)
    recorder.event_started("b", time.time(), kind="doorbell")  # overlapping
    recorder.event_ended("a", time.time())
    await asyncio.sleep(0.5)
    recorder.event_ended("b", time.time())
    await asyncio.sleep(1.0)  # within b's post-roll: adjacent
    recorder.event_started("c", time.time())
    last_end = time.time()
    recorder.event_ended("c", last_end)
    (clip,) = await finished(recorder.store)
    assert clip["events"] == ["a", "b", "c"] and clip["kinds"] == ["motion", "doorbell"]
    stamps = decoded_stamps(recorder.store.path(clip["id"]), last_end)
    assert stamps[-1] >= last_end + 2.0 - STAMP_EARLY
    # a later event, after the post-roll, is a clip of its own
    recorder.event_started("d", time.time())
    recorder.event_ended("d", time.time())
    await eventually(lambda: len(recorder.store.clips()) == 2 and not recorder.store.clips()[-1]["recording"])
    assert recorder.store.clips()[-1]["events"] == ["d"]
    await eventually(lambda: recorder.stats.clips == 2)  # (the thread's report reaches the loop after)


@pytest.mark.slow  # (a camera recording for seconds)
async def test_a_passed_through_cameras_clip_holds_its_own_packets_byte_for_byte(serve, tmp_path):
    """Passthrough: the clip's pictures are the camera's NAL units as they were (no decode, no
    encode), from a keyframe of the camera's own, with the camera's SPS and PPS."""
    source = write_h264(tmp_path / "camera.mp4", "high", gop=15)
    with av.open(str(source)) as container:
        extradata = bytes(container.streams.video[0].codec_context.extradata)
        own = {tuple(n for n in split_avcc(bytes(p)) if nal_type(n) not in (NAL_SPS, NAL_PPS, NAL_AUD))
               for p in container.demux(video=0) if p.size}
    _, app = await serve(source=str(source), mode="passthrough", width=320, height=240, record=str(tmp_path / "rec"),
                         pre_roll=1.0, post_roll=1.0, **NO_FLOOR)
    recorder = recorder_of(app)
    await wait_preroll(recorder, 1.5)
    recorder.event_started("e", time.time())
    await asyncio.sleep(0.5)
    recorder.event_ended("e", time.time())
    (clip,) = await finished(recorder.store)
    path = recorder.store.path(clip["id"])
    pictures = samples(path)
    assert len(pictures) >= 40
    assert all(picture in own for picture in pictures), "a picture that is not one of the camera's own"
    with av.open(str(path)) as container:
        _, sps, pps = parse_avcc_extradata(bytes(container.streams.video[0].codec_context.extradata))
        first = next(container.demux(video=0))
        assert first.is_keyframe
    _, own_sps, own_pps = parse_avcc_extradata(extradata)
    assert (sps, pps) == (own_sps, own_pps)
    assert ffprobe(path)["streams"][0]["profile"] == "High"


@pytest.mark.slow
async def test_a_clip_killed_mid_way_plays_to_within_2_s_and_is_closed_at_the_next_start(serve, tmp_path):
    """kill -9 of a camtrack process 4 s into a clip: its .part file plays (ffmpeg decodes it
    without an error) up to a picture captured within 2 s of the kill; the next start closes it
    (cut after its last whole fragment, its duration in its header, renamed .mp4) and lists it."""
    process = subprocess.Popen([sys.executable, str(Path(__file__).parent / "record_process.py"), str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
        said = json.loads(line)
        await asyncio.sleep(4.0)
        # (the clip being written is listed with what it holds so far)
        listed = json.loads(http("GET", f"http://127.0.0.1:{said['port']}/api/recordings")[1])["recordings"]
        assert listed[0]["id"] == said["clip"] and listed[0]["recording"] is True
        assert listed[0]["duration"] >= 4.0 and listed[0]["bytes"] > 100_000
        killed = time.time()
        process.kill()  # SIGKILL: nothing of camtrack runs after this
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    store = Store(tmp_path)
    part = store.path(said["clip"], ".mp4.part")
    assert part.exists() and not store.path(said["clip"]).exists()
    assert decode_errors(part) == ""
    stamps = decoded_stamps(part, killed)
    assert stamps[0] <= said["started"] - 2.0
    assert stamps[-1] >= killed - 2.0, f"the file ends {killed - stamps[-1]:.2f} s before the kill"

    _, app = await serve(record=str(tmp_path), **NO_FLOOR)
    clips = app[RECORDINGS].recorders["default"].store.clips()
    (clip,) = [c for c in clips if c["id"] == said["clip"]]
    assert clip["recording"] is False and clip["repaired"] is True
    path = store.path(said["clip"])
    assert path.exists() and not part.exists()
    probe = ffprobe(path)
    assert abs(float(probe["format"]["duration"]) - clip["duration"]) < 0.1
    assert clip["duration"] >= killed - 2.0 - stamps[0]
    assert int(probe["streams"][0]["nb_read_frames"]) == len(stamps)


async def record_clips(recorder: Recorder, count: int, seconds: float = 0.3) -> list[dict[str, Any]]:
    """`count` clips, one after the other, each of one event `seconds` long."""
    for n in range(count):
        recorder.event_started(f"event-{n}", time.time(), kind="motion" if n % 2 else "doorbell")
        await asyncio.sleep(seconds)
        recorder.event_ended(f"event-{n}", time.time())
        await eventually(lambda n=n: recorder.stats.clips == n + 1)
    return recorder.store.clips()


@pytest.mark.slow  # (a camera recording for seconds)
async def test_retention_deletes_the_oldest_past_the_size_cap_and_keeps_protected_ones(serve, tmp_path):
    _, app = await serve(record=str(tmp_path), pre_roll=0.5, post_roll=0.2, keyframe_interval=0.5, **NO_FLOOR)
    recorder = recorder_of(app)
    store = recorder.store
    await wait_preroll(recorder, 1.0)
    clips = await record_clips(recorder, 4)
    assert len(clips) == 4 and [c["start"] for c in clips] == sorted(c["start"] for c in clips)
    sizes = [c["bytes"] for c in clips]
    assert sizes == [store.path(c["id"]).stat().st_size for c in clips]
    await asyncio.to_thread(store.update, clips[0]["id"], protected=True)
    # room for the protected one and the newest two: the second oldest goes
    store.retention.max_bytes = sizes[0] + sizes[2] + sizes[3]
    deleted = await asyncio.to_thread(store.enforce)
    assert deleted == [clips[1]["id"]]
    assert not store.path(clips[1]["id"]).exists() and not store.path(clips[1]["id"], ".json").exists()
    assert [c["id"] for c in store.clips()] == [clips[0]["id"], clips[2]["id"], clips[3]["id"]]
    # by age: all but the protected one are older than a day from now + 2 days
    store.retention.max_bytes = 0
    store.retention.max_age_days = 1
    deleted = await asyncio.to_thread(store.enforce, time.time() + 2 * 86400)
    assert deleted == [clips[2]["id"], clips[3]["id"]]
    assert [c["id"] for c in store.clips()] == [clips[0]["id"]]
    assert store.stats.deleted == {"age": 2, "size": 1, "space": 0, "user": 0}


@pytest.mark.slow  # (a camera recording for seconds)
async def test_the_api_lists_serves_with_ranges_thumbnails_deletes_and_protects(serve, tmp_path):
    from aiohttp import ClientSession
    url, app = await serve(record=str(tmp_path), pre_roll=0.5, post_roll=0.2, keyframe_interval=0.5, token="s3cret",
                           **NO_FLOOR)
    base = url.removesuffix("/ws")
    recorder = recorder_of(app)
    await wait_preroll(recorder, 1.0)
    clips = await record_clips(recorder, 3)
    auth = {"Authorization": "Bearer s3cret"}
    async with ClientSession() as http:
        async with http.get(f"{base}/api/recordings") as response:
            assert response.status == 401
        async with http.get(f"{base}/api/recordings", headers=auth) as response:
            body = await response.json()
        assert body["total"] == 3 and [c["id"] for c in body["recordings"]] == [c["id"] for c in reversed(clips)]
        assert body["recorders"]["default"]["state"] == "idle"
        async with http.get(f"{base}/api/recordings?kind=motion&limit=1&page=1", headers=auth) as response:
            body = await response.json()
        assert body["total"] == 1 and body["recordings"][0]["id"] == clips[1]["id"]
        # (a clip's pre-roll may overlap the clip before: a range matches the clips that overlap it)
        async with http.get(f"{base}/api/recordings?from={clips[1]['end'] + 0.001}", headers=auth) as response:
            assert [c["id"] for c in (await response.json())["recordings"]] == [clips[2]["id"]]
        async with http.get(f"{base}/api/recordings?camera=nope", headers=auth) as response:
            assert response.status == 404
        async with http.get(f"{base}/api/recordings?limit=0", headers=auth) as response:
            assert response.status == 400
        clip_id = clips[0]["id"]
        whole = store_bytes = recorder.store.path(clip_id).read_bytes()
        async with http.get(f"{base}/api/recordings/{clip_id}?token=s3cret") as response:
            assert response.status == 200 and response.headers["Content-Type"] == "video/mp4"
            assert await response.read() == store_bytes
        async with http.get(f"{base}/api/recordings/{clip_id}", headers={**auth, "Range": "bytes=100-199"}) as response:
            assert response.status == 206 and await response.read() == whole[100:200]
            assert response.headers["Content-Range"] == f"bytes 100-199/{len(whole)}"
        async with http.get(f"{base}/api/recordings/{clip_id}/thumbnail.jpg", headers=auth) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "image/jpeg"
            jpeg = await response.read()
        assert jpeg[:2] == b"\xff\xd8" and recorder.store.path(clip_id, ".jpg").exists()
        for bad in ("..%2F..%2Fetc%2Fpasswd", "default.20260101T000000.zzzzzz", "x"):
            async with http.get(f"{base}/api/recordings/{bad}", headers=auth) as response:
                assert response.status == 404
        # changes: the token, and no other site's page
        async with http.delete(f"{base}/api/recordings/{clip_id}",
                               headers={**auth, "Origin": "http://evil.example"}) as response:
            assert response.status == 403
        async with http.post(f"{base}/api/recordings/{clip_id}/protect") as response:
            assert response.status == 401
        async with http.post(f"{base}/api/recordings/{clip_id}/protect", headers=auth) as response:
            assert response.status == 200 and (await response.json())["protected"] is True
        assert json.loads(recorder.store.path(clip_id, ".json").read_text())["protected"] is True
        recorder.store.retention.max_bytes = 1
        await asyncio.to_thread(recorder.store.enforce)
        assert [c["id"] for c in recorder.store.clips()] == [clip_id]
        async with http.delete(f"{base}/api/recordings/{clip_id}/protect", headers=auth) as response:
            assert (await response.json())["protected"] is False
        async with http.delete(f"{base}/api/recordings/{clip_id}", headers=auth) as response:
            assert response.status == 204
        assert not recorder.store.path(clip_id).exists() and not recorder.store.path(clip_id, ".jpg").exists()
        async with http.get(f"{base}/api/recordings/{clip_id}", headers=auth) as response:
            assert response.status == 404
        async with http.get(f"{base}/metrics") as response:
            metrics = await response.text()
    assert 'camtrack_recording_clips_total{camera="default"} 3.0' in metrics
    assert 'camtrack_recording_state{camera="default",state="idle"} 1.0' in metrics
    assert f'camtrack_recordings_deleted_total{{dir="{recorder.store.root}",reason="user"}} 1.0' in metrics


def http(method: str, url: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.slow
@pytest.mark.timeout(1500)
async def test_a_full_disk_stops_recording_cleanly_while_a_viewer_keeps_its_frame_rate(tmp_path):
    """camtrack recording onto a 1 MB tmpfs (a mount namespace of its own: `unshare -rm`), an event
    that never ends, a 3 Mbit/s camera: the disk fills within seconds; recording stops with one log
    line, the state and a metric, the clip written so far plays; an honest WebRTC viewer keeps its
    frame rate all along; deleting that clip through the API gives space back and recording
    resumes by itself (a new clip of the same event)."""
    from .honest import MACHINE_LOCK, HonestViewer, Watched, assert_unharmed
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    mount = tmp_path / "disk"
    mount.mkdir()
    script = Path(__file__).parent / "record_process.py"
    options = json.dumps({"bitrate": 3_000_000, "pre_roll": 1.0})
    log = tmp_path / "camtrack.log"
    lock = os.open(MACHINE_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)  # (a measured viewer: one at a time per machine)
    process = subprocess.Popen(
        ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$1" && exec "$2" "$3" "$1" 0 "$4"', "sh",
         str(mount), sys.executable, str(script), options],
        stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True, cwd=Path(__file__).parent.parent)  # noqa: SIM115
    viewer = None
    controls = contextlib.AsyncExitStack()
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
        if not line:
            pytest.skip(f"cannot mount a tmpfs in a user namespace here: {log.read_text()[-500:]}")
        said = json.loads(line)
        base = f"http://127.0.0.1:{said['port']}"
        inside = Path(f"/proc/{process.pid}/root") / str(mount).lstrip("/")  # (the tmpfs, seen from here)

        def recorder() -> dict[str, Any]:
            status, body = http("GET", f"{base}/api/recordings")
            assert status == 200
            described: dict[str, Any] = json.loads(body)["recorders"]["default"]
            return described

        # a control: the same camtrack recording the same event onto a disk with room, and a viewer
        # of it; the honest viewer is held to what the full disk did to it beyond what the machine's
        # load did to the control in the same seconds (tests/honest.py, assert_unharmed)
        (tmp_path / "roomy").mkdir()
        roomy = subprocess.Popen([sys.executable, str(script), str(tmp_path / "roomy"), "0", options],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 cwd=Path(__file__).parent.parent)
        controls.callback(roomy.wait, 10)
        controls.callback(roomy.kill)
        assert roomy.stdout is not None
        roomy_said = json.loads(await asyncio.wait_for(asyncio.to_thread(roomy.stdout.readline), 60))
        control = HonestViewer(f"ws://127.0.0.1:{roomy_said['port']}/ws")
        controls.push_async_callback(control.stop)
        await control.start()
        viewer = await HonestViewer(f"ws://127.0.0.1:{said['port']}/ws").start()

        async def watch(seconds: float) -> tuple[Watched, Watched]:
            seen, control_seen = await asyncio.gather(viewer.watch(seconds), control.watch(seconds))
            return seen, control_seen

        baseline, control_baseline = await watch(2.0)
        # full within seconds: stopped
        await eventually(lambda: recorder()["state"] == "stopped", timeout=30)
        assert recorder()["problem"]
        full, control_full = await watch(4.0)
        print(f"\nviewer: before {baseline}, disk full {full}; control: before {control_baseline}, then {control_full}")
        assert_unharmed(baseline, full, "while the disk was full", control=(control_baseline, control_full))
        assert recorder()["state"] == "stopped"
        stops = [ln for ln in log.read_text().splitlines() if "recording stopped" in ln]
        assert len(stops) == 1 and "No space left on device" in stops[0], stops
        metrics = http("GET", f"{base}/metrics")[1].decode()
        assert 'camtrack_recording_state{camera="default",state="stopped"} 1.0' in metrics
        assert 'camtrack_recording_stops_total{camera="default"} 1.0' in metrics
        # what was written plays (closed as far as it went)
        clip = inside / "default" / time.strftime("%Y-%m-%d", time.gmtime(said["started"] - 1.0))
        # (closed by the writer thread after the failed write: on a starved machine that may come after
        # the 4 s above)
        await eventually(lambda: bool(list(clip.glob("*.mp4"))), timeout=15)
        (written,) = list(clip.glob("*.mp4"))
        assert decode_errors(written) == ""
        assert written.stat().st_size > 500_000
        # space back: recording resumes by itself, a new clip of the same event
        status, body = http("GET", f"{base}/api/recordings")
        (listed,) = json.loads(body)["recordings"]
        assert listed["id"] == said["clip"] and listed["recording"] is False
        assert http("DELETE", f"{base}/api/recordings/{said['clip']}")[0] == 204
        await eventually(lambda: recorder()["state"] == "recording" and recorder()["clip"] not in (None, said["clip"]),
                         timeout=15)
        resumed = [ln for ln in log.read_text().splitlines() if "recording resumes" in ln]
        assert len(resumed) == 1, resumed
        after, control_after = await watch(2.0)
        print(f"viewer after recording resumed {after}; control then {control_after}")
        assert_unharmed(baseline, after, "after recording resumed", control=(control_baseline, control_after))
    finally:
        if viewer is not None:
            await viewer.stop()
        await controls.aclose()
        process.kill()
        process.wait(10)
        os.close(lock)


# -- the parts alone (fast)

def packet(seq: int, captured: float, keyframe: bool, size: int = 1000) -> EncodedPacket:
    data = av.Packet(b"\0" * size)
    return EncodedPacket(seq, data, keyframe, captured, size, CodecInfo("h264", 640, 480))


def test_the_pre_roll_keeps_whole_gops_back_to_a_keyframe_at_least_its_seconds_old():
    preroll = PreRoll(seconds=2.0, max_bytes=10**9)
    preroll.add(packet(1, 0.0, False))
    assert len(preroll) == 0 and preroll.dropped == 1  # nothing before the first keyframe
    for n in range(300):  # 10 s at 30 fps, a keyframe a second
        preroll.add(packet(n + 2, n / 30, n % 30 == 0))
    newest = 299 / 30
    held = preroll.since(0.0)  # (everything held)
    assert held[0].keyframe and held[0].captured <= newest - 2.0
    assert held[0].captured > newest - 3.0, "more than one GOP beyond the pre-roll held"
    assert preroll.bytes == 1000 * len(preroll) and len(held) == len(preroll)
    # an event now: from the newest keyframe at least 2 s old
    start = preroll.since(newest - 2.0)
    assert start[0].keyframe and start[0].captured == 7.0 and start[-1].captured == newest
    # an event 2 s ago: the oldest held (the pre-roll cannot reach further back)
    assert preroll.since(newest - 4.0)[0] is held[0]
    preroll.gap()
    assert len(preroll) == 0 and preroll.bytes == 0


def test_the_pre_roll_is_bounded_in_bytes_whatever_the_gop():
    preroll = PreRoll(seconds=5.0, max_bytes=50_000)
    for n in range(300):  # a GOP of 2 s (60 packets of 1000 bytes): more than the budget holds
        preroll.add(packet(n + 1, n / 30, n % 60 == 0))
        assert preroll.bytes <= 50_000
    assert preroll.bytes == 1000 * len(preroll)
    held = preroll.since(1e9)
    assert not held or held[0].keyframe  # (never a GOP without its keyframe)


def fmp4_clip(tmp_path: Path, seconds: float = 3.0, path: Path | None = None) -> tuple[Path, int]:
    """A clip written by Fmp4Writer from libx264 packets (a keyframe a second, 30 fps)."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 160, 120, "yuv420p"
    encoder.time_base = fractions.Fraction(1, 30)
    encoder.options = {"g": "30", "bf": "0", "preset": "ultrafast", "tune": "zerolatency"}
    units = []
    for n in range(int(seconds * 30)):
        frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), n * 2 % 255, np.uint8), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = n
        units += [(bytes(p), p.is_keyframe, n) for p in encoder.encode(frame)]
    sps, pps = parameter_sets(units[0][0])
    path = path or tmp_path / "clip.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w+b") as file:
        writer = Fmp4Writer(file, 160, 120, sps, pps)
        for data, keyframe, n in units:
            writer.add(data, 12345 + n * 3000, keyframe)
        writer.finish()
    return path, len(units)


def test_a_clip_cut_anywhere_is_repaired_to_its_last_whole_fragment(tmp_path):
    """fmp4.repair on the file cut at every 997th byte (a crash at any moment): what it keeps
    decodes without an error, holds every fragment that was whole, and says its duration."""
    path, count = fmp4_clip(tmp_path)
    whole = path.read_bytes()
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames in (0, count)
        assert sum(1 for _ in container.decode(video=0)) == count
    cut = tmp_path / "cut.mp4"
    kept_before = -1
    for end in range(len(whole) // 3, len(whole), 997):
        cut.write_bytes(whole[:end])
        fixed = repair(cut)
        assert fixed.kept <= end and fixed.kept + fixed.cut == end and fixed.kept >= kept_before
        kept_before = fixed.kept
        with av.open(str(cut)) as container:
            decoded = sum(1 for _ in container.decode(video=0))
            duration = container.duration
        assert decoded == fixed.samples
        if fixed.samples:  # (a header alone has no duration)
            assert duration is not None and abs(duration / 1e6 - fixed.seconds) < 0.05
        # a fragment a second: at most about a second (and a picture) lost
        assert fixed.seconds >= end / len(whole) * count / 30 - 1.1
    cut.write_bytes(whole[:20])
    with pytest.raises(ValueError):
        repair(cut)


@pytest.mark.slow
async def test_a_server_stopping_mid_clip_finishes_it_and_a_vp8_camera_is_not_recorded(tmp_path):
    """The server's own stop (its cleanup, as on SIGTERM) closes the clip being written: renamed
    .mp4, its sidecar finished. A VP8 camera's recorder says `unsupported` and writes nothing; with
    --encoder per-viewer, --record is refused at start."""
    from aiohttp import web

    from camtrack import Config, create_app
    from camtrack.connections import make_runner
    config = Config(host="127.0.0.1", port=0, source="pattern", webrtc_port=0, rtsp_port=0, record=str(tmp_path),
                    keyframe_interval=1.0, pre_roll=1.0, cameras=[], record_min_free=0.0)
    config.cameras = [config.camera("h264", "pattern"), config.camera("vp", "pattern", codec="vp8")]
    app = create_app(config)
    runner = make_runner(app, config)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        recorder, vp8 = recorder_of(app, "h264"), recorder_of(app, "vp")
        await wait_preroll(recorder, 1.5)
        recorder.event_started("open", time.time())
        await eventually(lambda: vp8.state == "unsupported")
        # (it lets go of the camera: nothing of it will be recorded)
        await eventually(lambda: not app[CAMERAS].get("vp").pipeline.source.watched)
        vp8.event_started("ignored", time.time())
        await asyncio.sleep(1.0)
        clip = recorder.clip
        assert clip is not None and recorder.store.path(clip.id, ".mp4.part").exists()
    finally:
        await runner.cleanup()
    assert not recorder.store.path(clip.id, ".mp4.part").exists()
    info = json.loads(recorder.store.path(clip.id, ".json").read_text())
    assert info["recording"] is False and info["duration"] >= 1.5 and info["events"] == ["open"], info
    assert decode_errors(recorder.store.path(clip.id)) == ""
    assert vp8.stats.missed == 1 and not (tmp_path / "vp").exists(), (vp8.describe(), list(tmp_path.iterdir()))
    with pytest.raises(ValueError, match="--encoder shared"):
        Config(source="pattern", record=str(tmp_path), encoder="per-viewer")


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_read_only_directory_stops_recording_and_rw_resumes_it(tmp_path):
    """camtrack recording into a read-only tmpfs (a mount namespace of its own): recording is
    stopped with one log line naming the cause, an event makes no clip (counted missed); remounted
    read-write (nsenter), recording resumes by itself and records the event still open."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("needs unshare and nsenter (util-linux)")
    mount = tmp_path / "disk"
    mount.mkdir()
    log = tmp_path / "camtrack.log"
    process = subprocess.Popen(
        ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64m,ro tmpfs "$1" && exec "$2" "$3" "$1" 0 "$4"', "sh",
         str(mount), sys.executable, str(Path(__file__).parent / "record_process.py"), json.dumps({"pre_roll": 1.0})],
        stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True)  # noqa: SIM115
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
        if not line:
            pytest.skip(f"cannot mount a tmpfs in a user namespace here: {log.read_text()[-500:]}")
        said = json.loads(line)
        base = f"http://127.0.0.1:{said['port']}"

        def recorder() -> dict[str, Any]:
            described: dict[str, Any] = json.loads(http("GET", f"{base}/api/recordings")[1])["recorders"]["default"]
            return described

        assert said["clip"] is None and recorder()["state"] == "stopped" and recorder()["missed"] == 1
        assert "Read-only file system" in recorder()["problem"]
        await asyncio.sleep(3.0)
        stops = [ln for ln in log.read_text().splitlines() if "recording stopped" in ln]
        assert len(stops) == 1 and "Read-only file system" in stops[0], stops
        subprocess.run(["nsenter", "-t", str(process.pid), "-U", "-m", "--preserve-credentials", "mount", "-o",
                        "remount,rw", str(mount)], check=True, timeout=10)
        await eventually(lambda: recorder()["state"] == "recording" and recorder()["clip"] is not None, timeout=15)
        assert sum("recording resumes" in ln for ln in log.read_text().splitlines()) == 1
        inside = Path(f"/proc/{process.pid}/root") / str(mount).lstrip("/")
        await eventually(lambda: any(p.stat().st_size > 50_000 for p in inside.glob("default/*/*.mp4.part")))
        (part,) = list(inside.glob("default/*/*.mp4.part"))
        assert decode_errors(part) == ""
        sidecar = json.loads(part.with_name(part.name.removesuffix(".mp4.part") + ".json").read_text())
        assert sidecar["events"] == ["killed-mid-clip"]  # (the event still open)
    finally:
        process.kill()
        process.wait(10)


@pytest.mark.slow
async def test_continuous_recording_cuts_clips_one_after_the_other_without_a_gap(serve, tmp_path):
    """--record-segments 2: clips of 2 s (to the next keyframe) one after the other, the next one's
    first picture the one after the last one's (the stamps: no picture lost or twice); an event
    adds its id and kind to the clips it falls in, and only those."""
    _, app = await serve(record=str(tmp_path), record_segments=2.0, keyframe_interval=0.5, **NO_FLOOR)
    recorder = recorder_of(app)
    store = recorder.store
    await eventually(lambda: len(store.clips()) >= 2, timeout=20)
    recorder.event_started("bell", time.time(), kind="doorbell")
    recorder.event_ended("bell", time.time())
    await eventually(lambda: sum(not c["recording"] for c in store.clips()) >= 4, timeout=30)
    clips = [c for c in store.clips() if not c["recording"]]
    assert all(c["events"][0] == "continuous" and "continuous" in c["kinds"] for c in clips)
    # (a clip is cut at the first keyframe captured 2 s or more after its start, but its duration is
    # its pictures' times plus the last one's, taken to last as long as the one before it: a keyframe
    # captured a hair past 2 s (keyframes come every 0.5 s: the one at 2 s always is near) after a
    # longer gap than the one before read 1.993 s under load (2 runs in 4); a frame of slack keeps
    # a cut a keyframe early, at 1.5 s, failing)
    assert all(2.0 - 1 / 30 <= c["duration"] < 2.0 + 0.5 + 0.2 for c in clips), [c["duration"] for c in clips]
    with_bell = [c for c in clips if "bell" in c["events"]]
    assert 1 <= len(with_bell) <= 2 and all(c["kinds"] == ["continuous", "doorbell"] for c in with_bell)
    assert "bell" not in clips[-1]["events"]
    stamps = [decoded_stamps(store.path(c["id"]), c["start"]) for c in clips]
    for before, after in zip(stamps, stamps[1:], strict=False):
        assert 0 < after[0] - before[-1] < 0.06, "a picture lost or repeated between clips"
    assert recorder.state == "recording"


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("cvlc") is None, reason="needs vlc-bin")
async def test_vlc_plays_a_clip_to_its_last_picture(serve, tmp_path):
    """Debian's VLC (as nobody: it refuses root) plays a clip file as it is; its scene filter
    writes every picture: (nearly) as many as the clip holds, the last one the clip's last (its stamp)."""
    from .test_rtsp_output import run
    _, app = await serve(record=str(tmp_path / "clips"), pre_roll=1.0, post_roll=0.5, keyframe_interval=1.0,
                         **NO_FLOOR)
    recorder = recorder_of(app)
    await wait_preroll(recorder, 1.5)
    recorder.event_started("e", time.time())
    recorder.event_ended("e", time.time())
    (clip,) = await finished(recorder.store)
    stamps = decoded_stamps(recorder.store.path(clip["id"]), clip["start"])
    with tempfile.TemporaryDirectory() as directory:  # (under /tmp: nobody can reach it there)
        shared = Path(directory)
        shared.chmod(0o777)
        movie = shared / "clip.mp4"
        shutil.copy(recorder.store.path(clip["id"]), movie)
        movie.chmod(0o644)
        status, out, err = await run(
            "env", f"HOME={shared}", "cvlc", "-I", "dummy", "--no-audio", "--vout=dummy", "--play-and-exit",
            "--no-drop-late-frames", "--no-skip-frames", "--video-filter=scene", f"--scene-path={shared}",
            "--scene-prefix=f", "--scene-format=png", "--scene-ratio=1", str(movie), timeout=60,
            user="nobody" if os.geteuid() == 0 else None)
        pictures = sorted(shared.glob("f*.png"))
        # (all of them, but a player on a busy machine may still lose one or two)
        assert len(pictures) >= 0.9 * len(stamps), (len(pictures), len(stamps), err.decode(errors="replace")[-2000:])
        image = cv2.imread(str(pictures[-1]), cv2.IMREAD_GRAYSCALE)
    assert image.shape[1] == 640  # (VLC's scene filter may scale it to the display's aspect)
    image = cv2.resize(image, (640, 480), interpolation=cv2.INTER_NEAREST)
    assert abs(stamp_time(read_stamp(image), clip["start"]) - stamps[-1]) < 0.1


@pytest.mark.slow
async def test_an_event_posted_to_the_api_makes_a_clip_of_its_kind(serve, tmp_path):
    """The event bus reaches the recorder: `POST /api/cameras/NAME/events` (a doorbell, 1 s) makes a
    clip holding that event's id and kind, from the pre-roll before its start."""
    from aiohttp import ClientSession
    url, app = await serve(record=str(tmp_path), pre_roll=1.0, post_roll=0.5, keyframe_interval=0.5, **NO_FLOOR)
    base = url.removesuffix("/ws")
    recorder = recorder_of(app)
    await wait_preroll(recorder, 1.5)
    async with ClientSession() as http_client:
        async with http_client.post(f"{base}/api/cameras/default/events",
                                    json={"kind": "doorbell", "duration": 1}) as response:
            assert response.status == 201, await response.text()
            event = (await response.json())["event"]
    (clip,) = await finished(recorder.store)
    assert clip["events"] == [event["id"]] and clip["kinds"] == ["doorbell"]
    stamps = decoded_stamps(recorder.store.path(clip["id"]), event["start"])
    assert stamps[0] <= event["start"] - 1.0 and stamps[-1] >= event["start"] + 1.0 + 0.5 - STAMP_EARLY


def test_a_clip_file_a_crash_left_without_its_sidecar_is_closed_and_listed(tmp_path):
    """A crash between a clip's first bytes and its sidecar: the next start (Store.load) closes the
    .part file and describes it from its name; a file that is no clip's is left alone."""
    store = Store(tmp_path)
    clip_id = "porch.20261205T131604.1e69a5"
    part = store.path(clip_id, ".mp4.part")
    fmp4_clip(tmp_path, path=part)
    whole = part.read_bytes()
    part.write_bytes(whole[:len(whole) - 300])  # (torn)
    stray = tmp_path / "porch" / "2026-12-05" / "notes.mp4.part"
    stray.write_bytes(b"not a clip")
    store.load()
    (info,) = store.clips()
    assert info["id"] == clip_id and info["repaired"] is True and info["recording"] is False
    assert info["start"] == 1796476564.0 and info["camera"] == "porch" and 1.5 < info["duration"] < 3.0
    assert store.path(clip_id).exists() and not part.exists() and stray.exists()
    assert json.loads(store.path(clip_id, ".json").read_text()) == info


def test_recorders_sharing_a_directory_check_its_space_at_once_without_tripping_each_other(tmp_path):
    """Two cameras recording into one directory check it at the same moments (their own threads):
    each probe is its own file (one shared name made one thread unlink the other's probe, and a
    recorder stop for 'No such file or directory' under load)."""
    import concurrent.futures
    store = Store(tmp_path, Retention(min_free_bytes=0))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        problems = list(pool.map(lambda _: store.check_space(), range(400)))
    assert problems == [None] * 400
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
async def test_motion_makes_a_clip_while_nobody_watches(serve, tmp_path):
    """--record with --motion and no viewer, on a passed-through camera (the recorder reads its own
    packets, so nothing else runs the detector): the events' default (`auto`) keeps the camera
    processed while it records, so the file's moving picture makes a motion event, and a clip."""
    source = write_h264(tmp_path / "camera.mp4", "baseline", gop=15)
    url, app = await serve(source=str(source), mode="passthrough", width=320, height=240, record=str(tmp_path / "rec"),
                           motion=True, motion_event_threshold=0.001, motion_event_duration=0.2, pre_roll=1.0,
                           post_roll=0.5, **NO_FLOOR)
    recorder = recorder_of(app)
    await eventually(lambda: any("motion" in (clip.get("kinds") or []) for clip in recorder.store.clips()),
                     timeout=30)
    camera = app[CAMERAS].get("default")
    assert camera.viewer_count == 0, "a viewer watched: the test is of a camera nobody watches"
    assert camera.pipeline.plan.mode == "passthrough"
