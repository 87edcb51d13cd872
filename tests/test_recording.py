"""Recording (camtrack.outputs.recording, docs/recording.md): clips of events with true pre-roll, cut
from the packets viewers get, written as fragmented MP4 and read back with PyAV and ffprobe."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import av
import pytest

from camtrack.app import RECORDINGS
from camtrack.media.stamp import MODULUS, read_stamp
from camtrack.outputs.recording import Recorder, Store
from camtrack.outputs.recording.fmp4 import parameter_sets
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


def ffprobe(path: Path) -> dict[str, Any]:
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format",
                          "-count_frames", str(path)], capture_output=True, text=True, timeout=30, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


async def wait_preroll(recorder: Recorder, seconds: float) -> None:
    await eventually(lambda: recorder.preroll.span >= seconds, timeout=20)


async def finished(store: Store, timeout: float = 20.0) -> list[dict[str, Any]]:
    await eventually(lambda: bool(store.clips()) and not any(c.get("recording") for c in store.clips()),
                     timeout=timeout)
    return store.clips()


async def test_a_clip_starts_pre_roll_before_its_event_and_ends_post_roll_after(serve, tmp_path):
    """The pattern's stamps: the clip's first picture was captured at least --pre-roll before the
    event's start, its last at least --post-roll after its end; the file is the encoder's H.264
    with the encoder's own parameter sets, which ffmpeg decodes without an error."""
    _, app = await serve(record=str(tmp_path), pre_roll=2.0, post_roll=1.5, keyframe_interval=1.0, **NO_FLOOR)
    recorder = recorder_of(app)
    await wait_preroll(recorder, 3.0)
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
    assert stamps[-1] >= ended + 1.5, f"last picture {stamps[-1] - ended:.2f} s after the end"
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False)), "pictures out of order"
    assert len(stamps) >= 25 * (stamps[-1] - stamps[0]), "pictures missing"

    probe = ffprobe(path)
    (stream,) = probe["streams"]
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
    assert subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True,
                          text=True, timeout=60).stderr == ""


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
    assert stamps[-1] >= last_end + 2.0
    # a later event, after the post-roll, is a clip of its own
    recorder.event_started("d", time.time())
    recorder.event_ended("d", time.time())
    await eventually(lambda: len(recorder.store.clips()) == 2 and not recorder.store.clips()[-1]["recording"])
    assert recorder.store.clips()[-1]["events"] == ["d"]
    assert recorder.stats.clips == 2


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
