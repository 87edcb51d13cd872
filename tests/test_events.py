"""Events (camtrack.events, docs/events.md): the bus and its slow subscribers, the motion and
processing-data state machines, the HTTP calls that start and end events, the listing, and Server-
Sent Events; events from a real --process function on a real pattern camera."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp
import numpy as np
import pytest

from camtrack import Config
from camtrack.app import CAMERAS, EVENTS
from camtrack.events import EventBus
from camtrack.events.bus import Subscription, SubscriptionClosed
from camtrack.events.data import BadEvent, DataEvents, reports
from camtrack.events.model import Change
from camtrack.events.motion import MotionTrigger
from camtrack.events.recording import RecordingTrigger
from camtrack.outputs import sse
from camtrack.processing import FrameInfo

from .conftest import eventually, run_app


def root(url: str) -> str:
    return url.removesuffix("/ws")


# the bus


async def test_every_subscriber_gets_every_change_in_order():
    bus = EventBus()
    first, second = bus.subscribe("a"), bus.subscribe("b", camera="porch")
    porch = bus.start("porch", "doorbell", source="http", details={"who": "?"})
    yard = bus.start("yard", "motion", source="motion")
    bus.update(porch.id, {"who": "postman"})
    bus.end(porch.id)
    bus.end(yard.id, at=yard.start + 3)
    got = [await first.get() for _ in range(5)]
    assert [(c.action, c.camera) for c in got] == [("start", "porch"), ("start", "yard"), ("update", "porch"),
                                                   ("end", "porch"), ("end", "yard")]
    assert [c.seq for c in got] == [1, 2, 3, 4, 5]
    # a change carries the event as it was then: the start still says who was unknown
    assert got[0].event["details"] == {"who": "?"} and got[2].event["details"] == {"who": "postman"}
    assert got[0].event["end"] is None and got[4].event["end"] == round(yard.start + 3, 3)
    assert [c.action for c in [second.get_nowait(), second.get_nowait(), second.get_nowait()]] == \
        ["start", "update", "end"]
    assert second.get_nowait() is None
    assert bus.end(porch.id) is None  # (ended already)


async def test_a_slow_subscriber_loses_its_oldest_and_it_is_counted_and_logged_once(caplog):
    bus = EventBus()
    slow, keeping = bus.subscribe("slow", limit=3), bus.subscribe("keeping", limit=1000)
    began = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="camtrack.events.bus"):
        for _ in range(200):
            bus.end(bus.start("porch", "http", source="http").id)
    # 400 changes published without waiting for anyone
    assert time.perf_counter() - began < 1.0
    assert len(slow) == 3 and slow.dropped == 397 and bus.dropped["slow"] == 397
    assert [(await slow.get()).seq for _ in range(3)] == [398, 399, 400]  # the newest kept, in order
    assert len(keeping) == 400 and keeping.dropped == 0
    # a crowd of slow clients of one kind (SSE) is one line too
    crowd = [bus.subscribe("crowd", limit=1) for _ in range(20)]
    with caplog.at_level(logging.WARNING, logger="camtrack.events.bus"):
        for _ in range(5):
            bus.end(bus.start("porch", "http", source="http").id)
    assert all(c.dropped == 9 for c in crowd) and bus.dropped["crowd"] == 180
    assert [r.message.split(":")[0] for r in caplog.records if "too slow" in r.message] == \
        ["event subscriber slow is too slow", "event subscriber crowd is too slow"]


async def test_a_camera_has_at_most_max_open_events_and_the_history_is_bounded():
    bus = EventBus(history=10, max_open=3)
    events = [bus.start("porch", "http", source="http") for _ in range(3)]
    with pytest.raises(Exception, match="3 open events"):
        bus.start("porch", "http", source="http")
    bus.start("yard", "http", source="http")  # (another camera's count)
    bus.end(events[0].id)
    bus.start("porch", "http", source="http")
    for _ in range(20):
        bus.end(bus.start("yard", "x", source="http").id)
    assert len(list(bus.recent())) == 10


async def test_kinds_made_up_without_end_are_counted_as_other_past_the_first_64():
    bus = EventBus()
    for n in range(100):
        bus.end(bus.start("porch", f"k{n}", source="http").id)
    bus.end(bus.start("yard", "k99", source="http").id)
    assert len([key for key in bus.started if key[0] == "porch"]) == 65
    assert bus.started["porch", "other"] == 36 and bus.started["yard", "k99"] == 1
    assert bus.known_kind("porch", "k1") == "k1" and bus.known_kind("porch", "k99") is None
    bus.close()
    with pytest.raises(Exception, match="stopping"):
        bus.start("porch", "k1", source="http")


async def test_a_duration_ends_the_event_by_itself():
    bus = EventBus()
    event = bus.start("porch", "http", source="http", duration=0.2)
    assert event.ongoing
    await eventually(lambda: not event.ongoing, 5)
    assert 0.15 <= event.end - event.start < 3


async def test_the_recording_trigger_calls_a_recorder_per_event_of_its_camera():
    """The adapter the recorder is wired with: start(event_id, at) and end(event_id, at), of its camera only."""
    calls: list[tuple[str, str, float]] = []

    class Recorder:
        def start(self, event_id: str, at: float) -> None:
            calls.append(("start", event_id, at))

        async def end(self, event_id: str, at: float) -> None:
            calls.append(("end", event_id, at))

    bus = EventBus()
    trigger = RecordingTrigger(bus, "porch", Recorder())
    trigger.start()
    event = bus.start("porch", "motion", source="motion", at=100.0)
    bus.end(bus.start("yard", "motion", source="motion").id)
    bus.update(event.id, {"level": 1})
    bus.end(event.id, at=107.5)
    await eventually(lambda: len(calls) == 2, 5)
    assert calls == [("start", event.id, 100.0), ("end", event.id, 107.5)]
    await trigger.stop()


# the motion state machine


def run_motion(trigger: MotionTrigger, samples: list[tuple[float, float]]) -> list[tuple[str, float]]:
    found = []
    for level, at in samples:
        transition = trigger.feed(level, at)
        if transition is not None:
            found.append((transition.action, transition.at))
    return found


def test_motion_starts_after_the_duration_above_the_threshold_and_ends_after_the_quiet_gap():
    trigger = MotionTrigger(threshold=0.1, duration=1.0, gap=3.0)
    tenth = [i / 10 for i in range(200)]
    # 0.5 s above: too short; below; then above from t=4 on, until t=8; then quiet
    levels = [0.5 if 2 <= t < 2.5 else 0.3 if 4 <= t < 8 else 0.09 for t in tenth]
    found = run_motion(trigger, list(zip(levels, tenth, strict=True)))
    # it starts when it rose (4.0), once it stayed 1 s; it ends at its last motion (7.9), 3 s later
    assert found == [("start", 4.0), ("end", 7.9)]
    assert trigger.peak == 0.3 and not trigger.active


def test_motion_that_pauses_shorter_than_the_gap_is_one_event():
    trigger = MotionTrigger(threshold=0.1, duration=0.0, gap=2.0)
    samples = [(0.5, 0.0), (0.0, 1.0), (0.0, 1.9), (0.8, 1.95), (0.0, 3.0), (0.0, 3.9), (0.0, 4.0)]
    assert run_motion(trigger, samples) == [("start", 0.0), ("end", 1.95)]
    assert trigger.peak == 0.8


def test_motion_ends_by_the_clock_when_samples_stop():
    trigger = MotionTrigger(threshold=0.1, duration=0.0, gap=2.0)
    assert run_motion(trigger, [(0.5, 10.0)]) == [("start", 10.0)]
    assert trigger.tick(11.0) is None
    ended = trigger.tick(12.5)
    assert ended is not None and (ended.action, ended.at) == ("end", 10.0)
    assert trigger.tick(20.0) is None


def test_the_threshold_is_inclusive():
    trigger = MotionTrigger(threshold=0.25, duration=0.0, gap=1.0)
    assert run_motion(trigger, [(0.2499, 0.0), (0.25, 0.1)]) == [("start", 0.1)]


# the processing data's "event" reports


def test_data_events_start_update_and_end():
    events = DataEvents()
    person = {"kind": "person", "details": {"count": 1}}
    assert [(t.action, t.kind) for t in events.feed({"event": person}, 1.0)] == [("start", "person")]
    assert events.feed({"event": person}, 1.1) == []
    two = {"kind": "person", "details": {"count": 2}}
    car = {"kind": "car", "gap": 0.5}
    assert [(t.action, t.kind, t.details) for t in events.feed({"event": [two, car]}, 1.2)] == \
        [("update", "person", {"count": 2}), ("start", "car", {})]
    # the car unreported for its gap ends at its last report; the person said inactive ends at once
    assert [(t.action, t.kind, t.at) for t in events.feed({"event": two}, 1.8)] == [("end", "car", 1.2)]
    assert [(t.action, t.kind, t.at) for t in events.feed({"event": {**two, "active": False}}, 1.9)] == \
        [("end", "person", 1.9)]
    assert events.active == []
    # data without "event" reports nothing; a kind reported inactive without an event opens none
    assert events.feed({"boxes": []}, 2.0) == [] and events.feed({"event": {"kind": "x", "active": False}}, 2) == []


@pytest.mark.parametrize("bad, says", [
    ({"event": "person"}, "must be an object"),
    ({"event": {"kind": "Person!"}}, "1-32 of a-z"),
    ({"event": {"kind": "events"}}, "reserved"),
    ({"event": {"kind": "p", "active": 1}}, "true or false"),
    ({"event": {"kind": "p", "details": []}}, "details must be an object"),
    ({"event": {"kind": "p", "gap": 0}}, "gap must be seconds"),
])
def test_malformed_event_reports_say_why(bad, says):
    with pytest.raises(BadEvent, match=says):
        reports(bad)


# over HTTP


async def test_http_start_end_and_duration(serve):
    url, app = await serve()
    base = root(url)
    bus = app[EVENTS].bus
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "/api/cameras/default/events",
                             json={"kind": "doorbell", "details": {"button": 1}}) as response:
            assert response.status == 201, await response.text()
            body = await response.json()
        event_id = body["id"]
        assert body["event"]["kind"] == "doorbell" and body["event"]["end"] is None
        assert body["event"]["details"] == {"button": 1} and body["event"]["source"] == "http"
        assert response.headers["Location"] == f"/api/cameras/default/events/{event_id}"
        assert bus.get(event_id) is not None and bus.get(event_id).ongoing
        async with http.post(base + f"/api/cameras/default/events/{event_id}/end") as response:
            assert response.status == 200
            ended = (await response.json())["event"]
        assert ended["end"] is not None and ended["end"] >= ended["start"]
        # a body-less POST is an "http" event; a duration ends it by itself
        async with http.post(base + "/api/cameras/default/events") as response:
            assert response.status == 201 and (await response.json())["event"]["kind"] == "http"
        async with http.post(base + "/api/cameras/default/events", json={"kind": "gate", "duration": 0.3}) as r:
            short = (await r.json())["id"]
        await eventually(lambda: not bus.get(short).ongoing, 5)
        # the listing: newest first, filtered, paged
        async with http.get(base + "/api/events?limit=2") as response:
            page = await response.json()
        assert [e["kind"] for e in page["events"]] == ["gate", "http"] and page["next"] == page["events"][1]["id"]
        async with http.get(base + f"/api/events?limit=2&before={page['next']}") as response:
            rest = await response.json()
        assert [e["id"] for e in rest["events"]] == [event_id] and rest["next"] is None
        async with http.get(base + "/api/events?kind=gate&camera=default") as response:
            assert [e["id"] for e in (await response.json())["events"]] == [short]
        async with http.get(base + f"/api/events?since={time.time() + 60}") as response:
            assert (await response.json())["events"] == []


async def test_bad_event_calls_get_a_clear_answer(serve):
    url, app = await serve(token="s3cret", allow_origins=["https://ok.example"])
    base = root(url)
    auth = {"Authorization": "Bearer s3cret"}
    start = base + "/api/cameras/default/events"
    bad = [
        ({"kind": "Door Bell"}, 400, "1-32 of a-z"),
        ({"kind": "events"}, 400, "reserved"),
        ({"duration": -1}, 400, "duration must be seconds"),
        ({"duration": 1e9}, 400, "at most 3600"),
        ({"duration": "5"}, 400, "duration must be seconds"),
        ({"details": [1]}, 400, "details must be a JSON object"),
        ({"when": 1}, 400, "unknown key 'when'"),
        ([1, 2], 400, "must be a JSON object"),
    ]
    async with aiohttp.ClientSession() as http:
        for body, status, says in bad:
            async with http.post(start, json=body, headers=auth) as response:
                assert response.status == status, (body, response.status)
                assert says in (await response.json())["error"], body
        async with http.post(start, data=b"{not json", headers={**auth, "Content-Type": "application/json"}) as r:
            assert r.status == 400 and "not JSON" in (await r.json())["error"]
        async with http.post(start, data=b"kind=x", headers={**auth, "Content-Type": "text/plain"}) as r:
            assert r.status == 415
        async with http.post(start, data=b"x" * 20000, headers={**auth, "Content-Type": "application/json"}) as r:
            assert r.status == 413
        # the token, the camera, the origin: as for every other write
        async with http.post(start, json={}) as response:
            assert response.status == 401
        async with http.post(start + "?token=wrong", json={}) as response:
            assert response.status == 401
        async with http.post(base + "/api/cameras/nope/events", json={}, headers=auth) as response:
            assert response.status == 404
        async with http.post(start, json={}, headers={**auth, "Origin": "https://evil.example"}) as response:
            assert response.status == 403
        async with http.post(start, json={}, headers={**auth, "Origin": "https://ok.example"}) as response:
            assert response.status == 201
            assert response.headers["Access-Control-Allow-Origin"] == "https://ok.example"
        async with http.post(start + "/nope/end", headers=auth) as response:
            assert response.status == 404
        async with http.get(base + "/api/events") as response:
            assert response.status == 401
        async with http.get(base + "/api/events/stream") as response:
            assert response.status == 401
        for query in ("limit=0", "limit=x", "since=nan", "before=nope", "camera=nope"):
            async with http.get(base + f"/api/events?{query}", headers=auth) as response:
                assert response.status == 400, query
        # the cap on open events per camera
        bus = app[EVENTS].bus
        while len(bus.open_events("default")) < bus.max_open:
            bus.start("default", "x", source="http")
        async with http.post(start, json={}, headers=auth) as response:
            assert response.status == 429 and "open events" in (await response.json())["error"]
        # a motion event is its source's to end
        bus.end(bus.open_events("default")[0].id)
        motion = bus.start("default", "motion", source="motion")
        async with http.post(start + f"/{motion.id}/end", headers=auth) as response:
            assert response.status == 409


async def read_sse(response: aiohttp.ClientResponse, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next `count` messages of a Server-Sent Events stream: their event name, id and data."""
    found: list[dict[str, Any]] = []
    message: dict[str, Any] = {}
    async with asyncio.timeout(timeout):
        while len(found) < count:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line.startswith(("event: ", "id: ")):
                key, _, value = line.partition(": ")
                message[key] = value
            elif line.startswith("data: "):
                message["data"] = json.loads(line[6:])
            elif line == "" and "data" in message:
                found.append(message)
                message = {}
    return found


async def test_server_sent_events_carry_every_change(serve):
    url, app = await serve(cameras=[])
    base = root(url)
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/api/events/stream") as stream, \
                http.get(base + "/api/events/stream?camera=default") as mine:
            assert stream.status == 200 and stream.headers["Content-Type"] == "text/event-stream"
            await eventually(lambda: app[EVENTS].bus.subscribers == 2, 5)
            async with http.post(base + "/api/cameras/default/events", json={"kind": "doorbell"}) as response:
                event_id = (await response.json())["id"]
            async with http.post(base + f"/api/cameras/default/events/{event_id}/end"):
                pass
            for got in (await read_sse(stream, 2), await read_sse(mine, 2)):
                assert [m["event"] for m in got] == ["start", "end"]
                assert [m["data"]["event"]["id"] for m in got] == [event_id, event_id]
                assert [m["data"]["type"] for m in got] == ["start", "end"]
                assert int(got[1]["id"]) == int(got[0]["id"]) + 1
    # the clients gone, their subscriptions are too
    await eventually(lambda: app[EVENTS].bus.subscribers == 0, 5)


def test_a_subscriber_coming_back_gets_what_it_missed_as_far_as_the_bus_keeps():
    bus = EventBus(changes=5)
    for n in range(4):  # 8 changes: seq 1..8, the bus keeps 4..8
        bus.start("porch" if n % 2 else "yard", "x", source="http", at=100.0 + n)
        bus.end(bus.open_events()[0].id, at=100.5 + n)
    assert bus.seq == 8
    assert [c.seq for c in drain(bus.subscribe("a", after=6))] == [7, 8]
    assert [c.seq for c in drain(bus.subscribe("b", after=1))] == [4, 5, 6, 7, 8]  # (2, 3: gone)
    assert [c.seq for c in drain(bus.subscribe("c", limit=2, after=1))] == [7, 8]
    assert [c.seq for c in drain(bus.subscribe("d", camera="porch", after=0))] == [4, 7, 8]  # (5, 6: yard's)
    assert drain(bus.subscribe("e", after=8)) == [] and drain(bus.subscribe("f")) == []
    # a number beyond the last: another run of the server's, so every change kept is after it
    assert [c.seq for c in drain(bus.subscribe("g", after=500))] == [4, 5, 6, 7, 8]
    assert bus.dropped["b"] == bus.dropped["c"] == 0  # (missed, not lost to slowness)


async def test_a_closed_bus_gives_its_replay_then_ends():
    bus = EventBus()
    bus.start("porch", "x", source="http")
    bus.close()
    late = bus.subscribe("late", after=0)
    assert [c.action for c in [await late.get(), await late.get()]] == ["start", "end"]
    with pytest.raises(SubscriptionClosed):
        await late.get()
    assert bus.subscribers == 0


def drain(subscription: Subscription) -> list[Change]:
    found = []
    while (change := subscription.get_nowait()) is not None:
        found.append(change)
    return found


async def test_a_reconnecting_stream_gets_the_changes_after_its_last_event_id(serve, monkeypatch):
    monkeypatch.setattr(sse, "POLL", 0.1)  # (a client that left is seen sooner: the test waits for it)
    url, app = await serve(cameras=[])
    base, bus = root(url), app[EVENTS].bus
    stream = base + "/api/events/stream"
    async with aiohttp.ClientSession() as http:
        async with http.get(stream) as first:
            await eventually(lambda: bus.subscribers == 1, 5)
            doorbell = bus.start("default", "doorbell", source="http")
            seen = await read_sse(first, 1)
        await eventually(lambda: bus.subscribers == 0, 5)
        # while it was away: the doorbell ended, a gate opened
        bus.end(doorbell.id)
        gate = bus.start("default", "gate", source="http")
        async with http.get(stream, headers={"Last-Event-ID": seen[-1]["id"]}) as again:
            await eventually(lambda: bus.subscribers == 1, 5)
            bus.end(gate.id)  # (after it came back)
            got = await read_sse(again, 3)
        assert [(m["event"], m["data"]["event"]["kind"]) for m in got] == \
            [("end", "doorbell"), ("start", "gate"), ("end", "gate")]
        assert [int(m["id"]) for m in got] == [int(seen[-1]["id"]) + n for n in (1, 2, 3)]
        # one camera's only; an id of another run of the server (beyond the last seq): all kept
        async with http.get(stream + "?camera=default", headers={"Last-Event-ID": "123456"}) as other:
            assert [int(m["id"]) for m in await read_sse(other, 4)] == [1, 2, 3, 4]
        # no id, or one that is no seq: from now on
        for headers in ({}, {"Last-Event-ID": "nonsense"}):
            async with http.get(stream, headers=headers) as fresh:
                await eventually(lambda: bus.subscribers == 1, 5)
                bus.start("default", "late", source="http")
                assert [m["data"]["event"]["kind"] for m in await read_sse(fresh, 1)] == ["late"]
            await eventually(lambda: bus.subscribers == 0, 5)


async def test_event_streams_share_the_cap_with_the_data_streams(serve, monkeypatch):
    monkeypatch.setattr(sse, "MAX_CLIENTS", 1)
    url, app = await serve(cameras=[])
    async with aiohttp.ClientSession() as http, http.get(root(url) + "/api/events/stream") as first:
        await eventually(lambda: app[EVENTS].bus.subscribers == 1, 5)
        async with http.get(root(url) + "/api/events/stream") as second:
            assert second.status == 503 and "1 event streams are open" in await second.text()
            assert second.headers["Retry-After"]
        assert app[EVENTS].bus.subscribers == 1  # (the refused one never subscribed)
        assert first.status == 200


async def test_event_streams_carry_the_last_changes_and_end_cleanly_at_shutdown():
    config = Config(source="pattern", width=160, height=120, host="127.0.0.1", port=0, webrtc_port=0,
                    rtsp_port=0, linger=0.5)
    app, runner, port = await run_app(config)
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/api/events/stream") as response:
            await eventually(lambda: app[EVENTS].bus.subscribers == 1, 5)
            event = app[EVENTS].bus.start("default", "doorbell", source="http")
            assert (await read_sse(response, 1))[0]["event"] == "start"
            cleanup = asyncio.ensure_future(runner.cleanup())
            last = await read_sse(response, 1)  # the server stopping ends the open event: said
            assert last[0]["event"] == "end" and last[0]["data"]["event"]["id"] == event.id
            assert last[0]["data"]["event"]["details"]["reason"] == "server stopping"
            await asyncio.wait_for(response.content.read(), 5)  # the end of the stream, not a reset
            await asyncio.wait_for(cleanup, 10)
    finally:
        await runner.cleanup()


# from a --process function on a real camera


class Reporting:
    """A processing function whose data the test sets: an event report, a motion level."""

    def __init__(self) -> None:
        self.data: Any = None

    def __call__(self, frame: np.ndarray, info: FrameInfo) -> Any:
        return self.data


async def test_a_process_functions_event_reports_make_events(serve):
    function = Reporting()
    url, app = await serve(width=160, height=120, fps=20, process_function=function, process_events="always",
                           motion_event_threshold=0.2, motion_event_duration=0.2, motion_event_gap=0.5)
    bus = app[EVENTS].bus
    changes = bus.subscribe("test")
    # no viewer: 'always' keeps the camera read and processed
    function.data = {"event": {"kind": "person", "details": {"count": 1}}}
    first = await asyncio.wait_for(changes.get(), 10)
    assert (first.action, first.kind, first.event["source"]) == ("start", "person", "processing")
    assert first.event["details"] == {"count": 1}
    function.data = {"event": {"kind": "person", "details": {"count": 2}}}
    update = await asyncio.wait_for(changes.get(), 10)
    assert (update.action, update.event["details"]) == ("update", {"count": 2})
    function.data = {"event": {"kind": "person", "active": False}}
    end = await asyncio.wait_for(changes.get(), 10)
    assert (end.action, end.id) == ("end", first.id)
    # motion: levels above the threshold for its duration, then quiet for its gap
    function.data = {"motion": {"level": 0.6, "regions": [[10, 20, 30, 40]]}}
    motion = await asyncio.wait_for(changes.get(), 10)
    assert (motion.action, motion.kind, motion.event["source"]) == ("start", "motion", "motion")
    assert motion.event["details"]["regions"] == [[10, 20, 30, 40]]
    function.data = {"motion": {"level": 0.01, "regions": []}}
    quiet = await asyncio.wait_for(changes.get(), 10)
    assert (quiet.action, quiet.id, quiet.event["details"]["peak"]) == ("end", motion.id, 0.6)
    assert quiet.event["end"] - quiet.event["start"] >= 0.15
    # malformed reports: said in /healthz's output description, no event
    function.data = {"event": {"kind": "BAD KIND"}}
    output = app[CAMERAS].first.pipeline.outputs["events"]
    await eventually(lambda: output.describe()["bad"] > 0, 10)
    assert "1-32 of a-z" in str(output.describe()["error"]) and changes.get_nowait() is None
    async with aiohttp.ClientSession() as http, http.get(root(url) + "/healthz") as response:
        shown = (await response.json())["sources"]["default"]["events"]
    assert shown["bad"] >= 1 and "1-32 of a-z" in shown["error"] and shown["keep_running"] is True
