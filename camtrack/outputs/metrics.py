"""`GET /metrics`: the cameras' counters in the Prometheus text format (prometheus-client).

Nothing is counted for Prometheus on the hot path: a collector reads the counters the
streams, encoders and outputs keep anyway, at scrape time.

The page costs less than what it asks (it is open, token or not, like /healthz and /api/cameras):
it is rendered at most once every MAX_AGE seconds (requests in between get the same bytes), and
each client address may ask PACE_BURST times at once, then PACE_RATE times a second; a request over
that is refused (429) after REFUSAL_DELAY seconds and its connection closed, with whatever it had
pipelined behind it. (A refused request spends none of its client's turns: requests pipelined on a
connection whose client has gone are still handled while aiohttp has stopped reading it, and had
they waited for turns they would have spent the client's for minutes.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from ..logs import ClientLog
from ..media import quality
from ..media.admission import MEASURED
from ..media.audio import AudioFeed
from ..media.encoder import ENCODE_BUCKETS
from ..media.feeds import VIEWER_TRANSPORTS, Transport
from ..media.packet import MediaKind
from .directory import Cameras
from .sse import EventStreams
from .webrtc import icelimits

logger = logging.getLogger(__name__)
log = ClientLog(logger)

#: the rendered page is served again for this many seconds
MAX_AGE = 1.0
#: what one client address may ask (Prometheus scrapes every 15 s or so)
PACE_BURST = 20
PACE_RATE = 2.0
#: seconds a request over the pace waits for its refusal
REFUSAL_DELAY = 1.0
#: client addresses remembered for pacing (the least recently seen is forgotten)
PACE_CLIENTS = 4096
#: one log line per client that was paced, at most this often
PACE_LOG_INTERVAL = 60.0


class _Pace:
    """A client's token bucket."""

    def __init__(self) -> None:
        self.tokens = float(PACE_BURST)
        self.stamp = time.monotonic()
        self.logged = -PACE_LOG_INTERVAL

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(float(PACE_BURST), self.tokens + (now - self.stamp) * PACE_RATE)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class CameraCollector:
    """Reads every camera's counters when Prometheus scrapes."""

    def __init__(self, cameras: Cameras, workers: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.cameras = cameras
        #: what the worker processes say of themselves (camtrack.workers.pool.WorkerPool.describe), if any
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        viewers = GaugeMetricFamily("camtrack_viewers", "Viewers now, by camera and transport.",
                                    labels=["camera", "transport"])
        up = GaugeMetricFamily("camtrack_source_up", "1 while the camera's source gives frames, else 0.",
                               labels=["camera"])
        watched = GaugeMetricFamily("camtrack_source_watched", "1 while someone watches the camera.",
                                    labels=["camera"])
        opens = CounterMetricFamily("camtrack_source_opens", "Times the camera's stream was opened.",
                                    labels=["camera"])
        failures_total = CounterMetricFamily(
            "camtrack_source_failures", "Times the camera's source failed to open, failed, ended or stalled "
            "(then opened again with back-off).", labels=["camera"])
        stalls = CounterMetricFamily("camtrack_source_stalls", "Times the camera's source stayed connected but "
                                     "gave no picture for a few seconds (then opened again).", labels=["camera"])
        captured = CounterMetricFamily("camtrack_frames_captured", "Frames captured.", labels=["camera"])
        decoded = CounterMetricFamily("camtrack_frames_decoded", "Frames decoded from a passed-through camera's "
                                      "H.264 (for MJPEG and snapshots, only while they are watched).", labels=["camera"])
        passed = CounterMetricFamily("camtrack_packets_passed_through", "Packets of a camera's own H.264 handed "
                                     "on to viewers, neither decoded nor encoded.", labels=["camera"])
        encoded = CounterMetricFamily("camtrack_frames_encoded", "Frames encoded by the shared encoders.",
                                      labels=["camera", "codec"])
        keyframes = CounterMetricFamily("camtrack_keyframes", "Keyframes encoded by the shared encoder.",
                                        labels=["camera", "codec"])
        keyframe_requests = CounterMetricFamily(
            "camtrack_keyframe_requests", "Keyframes asked for (joins, PLI/FIR).", labels=["camera", "codec"])
        sent = CounterMetricFamily("camtrack_frames_sent", "Frames handed to viewers.",
                                   labels=["camera", "transport"])
        sent_bytes = CounterMetricFamily("camtrack_sent_bytes", "Encoded bytes handed to viewers.",
                                         labels=["camera", "transport"])
        failures = CounterMetricFamily("camtrack_negotiation_failures",
                                       "WebRTC offers refused, or peers that never connected.",
                                       labels=["camera", "transport"])
        unresponsive = CounterMetricFamily("camtrack_viewers_unresponsive",
                                           "Connected WebRTC viewers closed because nothing came from them for "
                                           "--unresponsive-timeout.", labels=["camera", "transport"])
        janus_up = GaugeMetricFamily("camtrack_janus_publishing", "1 while the camera is published to Janus.",
                                     labels=["camera"])
        janus_publishes = CounterMetricFamily("camtrack_janus_publishes", "Times publishing to Janus started.",
                                              labels=["camera"])
        janus_failures = CounterMetricFamily("camtrack_janus_failures",
                                             "Times publishing to Janus failed or ended (then retried).",
                                             labels=["camera"])
        bridge_joins = CounterMetricFamily("camtrack_join_bridge_joins", "Viewers of a passed-through camera who "
                                           "joined between its keyframes through the join bridge.", labels=["camera"])
        bridge_runs = CounterMetricFamily("camtrack_join_bridge_runs", "Times the join bridge started (decoding from "
                                          "the camera's keyframe); joins in a row share a run.", labels=["camera"])
        encode_time = HistogramMetricFamily("camtrack_encode_seconds", "Time to encode one frame.",
                                            labels=["camera", "codec"])
        # quality tiers (docs/quality.md)
        on_tier: dict[tuple[str, str], int] = {}
        for reader in list(quality.READERS):
            if not reader.closed:
                on_tier[(reader.camera, reader.quality)] = on_tier.get((reader.camera, reader.quality), 0) + 1
        moves = dict(quality.MOVES)
        for worker in self.workers() if self.workers is not None else []:  # (their viewers too)
            for name, count in worker.get("tiers", {}).items():
                camera_name, _, tier_name = name.rpartition("/")
                on_tier[(camera_name, tier_name)] = on_tier.get((camera_name, tier_name), 0) + count
            for camera_name, before, after, why, count in worker.get("tier_moves", []):
                move = (camera_name, before, after, why)
                moves[move] = moves.get(move, 0) + count
        tier_viewers = GaugeMetricFamily("camtrack_tier_viewers", "Viewers on each quality tier now (WebRTC "
                                         "viewers, in worker processes too, and websocket-stream viewers).",
                                         labels=["camera", "tier"])
        tier_moves = CounterMetricFamily("camtrack_tier_moves", "Viewers moved from one quality tier to another, "
                                         "by why.", labels=["camera", "from", "to", "why"])
        for (camera_name, before, after, kind), count in sorted(moves.items()):
            tier_moves.add_metric([camera_name, before, after, kind], count)
        tier_encoded = CounterMetricFamily("camtrack_tier_frames_encoded", "Frames encoded once for all the viewers "
                                           "of a lower quality tier.", labels=["camera", "tier"])
        tier_seconds = CounterMetricFamily("camtrack_tier_encode_seconds", "Seconds a lower quality tier's encoder "
                                           "spent scaling and encoding.", labels=["camera", "tier"])
        wire = HistogramMetricFamily(
            "camtrack_capture_to_wire_seconds", "Time from a picture's capture to its being handed to a "
            "viewer's socket, per viewer and picture.", labels=["camera", "transport"])
        for camera in self.cameras:
            name = camera.name
            for transport in VIEWER_TRANSPORTS:
                viewers.add_metric([name, transport], len(camera.viewers[transport]))
                meter = camera.meters[transport]
                wire.add_metric([name, transport], meter.wire_age.cumulative(), meter.wire_age.total)
                sent.add_metric([name, transport], meter.frames)
                sent_bytes.add_metric([name, transport], meter.bytes)
                if transport in (Transport.WEBSOCKET, Transport.WHEP):  # the WebRTC ones
                    failures.add_metric([name, transport], meter.negotiation_failures)
                    unresponsive.add_metric([name, transport], meter.unresponsive)
            pipeline = camera.pipeline
            source = pipeline.source
            up.add_metric([name], 1 if source.state == "up" else 0)
            failures_total.add_metric([name], source.failures)
            stalls.add_metric([name], source.stalls)
            watched.add_metric([name], 1 if source.watched else 0)
            opens.add_metric([name], source.opens)
            captured.add_metric([name], source.frames)
            decoded.add_metric([name], source.decoded)
            if (packets := source.packets) is not None:
                passed.add_metric([name], packets)
            if (bridge := pipeline.bridge) is not None:
                bridge_joins.add_metric([name], bridge.joins)
                bridge_runs.add_metric([name], bridge.runs)
            if (janus := pipeline.outputs.get("janus")) is not None:
                described = janus.describe()
                janus_up.add_metric([name], 1 if described["state"] == "publishing" else 0)
                janus_publishes.add_metric([name], _number(described["publishes"]))
                janus_failures.add_metric([name], _number(described["failures"]))
            encoded.add_metric([name, "jpeg"], camera.jpeg.encoded)
            for quality_name in camera.qualities():
                tier_viewers.add_metric([name, quality_name], on_tier.get((name, quality_name), 0))
            for tier_name, tier_encoder in pipeline.quality_encoders().items():
                tier_encoded.add_metric([name, tier_name], tier_encoder.stats.frames)
                tier_seconds.add_metric([name, tier_name], tier_encoder.stats.encode_seconds)
            for codec, encoder in pipeline.encoders().items():
                stats = encoder.stats
                encoded.add_metric([name, codec], stats.frames)
                keyframes.add_metric([name, codec], stats.keyframes)
                keyframe_requests.add_metric([name, codec], stats.keyframe_requests)
                cumulative, buckets = 0, []
                for bound, count in zip([*map(str, ENCODE_BUCKETS), "+Inf"], stats.encode_buckets, strict=True):
                    cumulative += count
                    buckets.append((bound, cumulative))
                encode_time.add_metric([name, codec], buckets, stats.encode_seconds)
        load = self.cameras.load
        lag = HistogramMetricFamily("camtrack_event_loop_lag_seconds",
                                    "How late the event loop ran a probe due every 50 ms.")
        lag.add_metric([], load.lag.cumulative(), load.lag.total)
        yield lag
        from ..sources import rtspguard  # (its counters only)

        guard_cuts = CounterMetricFamily(
            "camtrack_pyav_guard_cuts", "Times the guard between PyAV's RTSP reader and a camera cut it, by why: "
            "oversized (more than 18 MiB without a picture), redirect (a 3xx answer, not followed), open_timeout "
            "(no stream within the open timeout), stalled (a side took nothing), bad_answer.", labels=["reason"])
        for kind in rtspguard.KINDS:
            guard_cuts.add_metric([kind], rtspguard.CUTS.get(kind, 0))
        yield guard_cuts
        yield GaugeMetricFamily("camtrack_event_loop_lag_recent_seconds",
                                "Median event-loop lag over the last 2 s (what admission control reads).",
                                value=load.recent_lag)
        capacity = load.capacity
        yield GaugeMetricFamily("camtrack_capacity_viewers", "Viewers the server can take, as measured from "
                                "the time one picture takes to reach every viewer and, under a CPU quota, "
                                "the CPU it uses (-1: not known yet).",
                                value=-1 if capacity is None else capacity)
        quota, used = load.quota, load.cpu_used
        yield GaugeMetricFamily("camtrack_cpu_quota_cores", "The CPU quota of the server's cgroup, in cores "
                                "(-1: none).", value=-1 if quota is None else quota)
        yield GaugeMetricFamily("camtrack_cpu_used_cores", "CPU the server used over the last 2 s, in cores "
                                "(-1: not known yet).", value=-1 if used is None else used)
        loop_cpu = load.loop_cpu
        yield GaugeMetricFamily("camtrack_loop_cpu_cores", "CPU the event loop's thread (what serves this "
                                "process's viewers, handshakes included) used over the last 2 s, in cores (-1: not "
                                "known yet); near 1 the process is full.", value=-1 if loop_cpu is None else loop_cpu)
        yield GaugeMetricFamily("camtrack_handshakes", "Peers negotiating now (paced).", value=load.handshaking)
        refused = CounterMetricFamily("camtrack_viewers_refused_load", "Newcomers refused for the measured load, "
                                      "by why: lag, age (pictures late), throttled (CPU quota used up), capacity, "
                                      "turn (no handshake turn in time).", labels=["reason"])
        for refusal in MEASURED:  # the label is the refusal's kind, whatever its words
            refused.add_metric([refusal.value], load.refusals.get(refusal, 0))
        yield refused
        ice_ignored = CounterMetricFamily(
            "camtrack_ice_ignored", "ICE checks (STUN binding requests) and candidates ignored, by why: learned (signed, "
            "from more new addresses than a peer may have), routes (on the shared port, from a new address of a "
            "peer that has all its addresses already), signalled (trickled candidates beyond a peer's bound).",
            labels=["reason"])
        for reason in ("learned", "routes", "signalled"):
            ice_ignored.add_metric([reason], getattr(icelimits.STATS, reason))
        yield ice_ignored
        yield wire
        yield from (failures_total, stalls)
        yield from (tier_viewers, tier_moves, tier_encoded, tier_seconds)
        yield from (viewers, up, watched, opens, captured, decoded, passed, encoded, keyframes, keyframe_requests, sent,
                    sent_bytes, failures, unresponsive, encode_time, bridge_joins, bridge_runs, janus_up, janus_publishes,
                    janus_failures)
        yield from _passthrough_metrics(self.cameras)
        yield from _processing_metrics(self.cameras)
        yield from _audio_metrics(self.cameras)
        if self.workers is not None:
            yield from self._workers(self.workers())

    def _workers(self, workers: list[dict[str, Any]]) -> Iterator[Metric]:
        up = GaugeMetricFamily("camtrack_worker_up", "1 while the worker process serves viewers.", labels=["worker"])
        peers = GaugeMetricFamily("camtrack_worker_peers", "Peers in the worker process now.", labels=["worker"])
        starts = CounterMetricFamily("camtrack_worker_starts", "Times the worker process started.", labels=["worker"])
        sent = CounterMetricFamily("camtrack_worker_packets_sent", "Packets relayed to the worker process (once "
                                   "each, whatever its viewers).", labels=["worker", "camera"])
        skipped = CounterMetricFamily("camtrack_worker_packets_skipped", "Packets a worker process read too slowly "
                                      "to get (newer ones went instead).", labels=["worker", "camera"])
        refused = CounterMetricFamily("camtrack_worker_datagrams_refused", "Datagrams for the worker process's "
                                      "peers the main process did not hand over, by why: forged (a request naming "
                                      "its peer that failed the password check), unproven (its peer's own "
                                      "credentials from more addresses than a peer has, over the budget), backlog "
                                      "(the worker read too slowly).", labels=["worker", "reason"])
        for worker in workers:
            label = str(worker["index"])
            for reason in ("forged", "unproven"):
                refused.add_metric([label, reason], worker.get("refused", {}).get(reason, 0))
            refused.add_metric([label, "backlog"], worker.get("datagrams_dropped", 0))
            up.add_metric([label], 1 if worker["ready"] else 0)
            peers.add_metric([label], worker["peers"])
            starts.add_metric([label], worker["starts"])
            for camera, count in worker["sent"].items():
                sent.add_metric([label, camera], count)
            for camera, count in worker["skipped"].items():
                skipped.add_metric([label, camera], count)
        yield from (up, peers, starts, sent, skipped, refused)


class PaceCollector:
    """How often /metrics itself was paced."""

    def __init__(self, paced: dict[str, int]) -> None:
        self.paced = paced

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("camtrack_metrics_paced", "GET /metrics requests over a client's pace, "
                                     "refused (429).", labels=["outcome"])
        for outcome, count in self.paced.items():
            family.add_metric([outcome], count)
        yield family


class EventFigures(Protocol):
    """What the events' metrics read (camtrack.events.figures.EventOutputs)."""

    def started(self) -> dict[tuple[str, str], int]: ...

    def open(self) -> dict[str, int]: ...

    def dropped(self) -> dict[str, int]: ...

    def deliveries(self) -> dict[tuple[str, str], int]: ...

    def mqtt_connected(self) -> bool | None: ...


class EventCollector:
    """The events (docs/events.md): started, open, lost by slow subscribers, delivered."""

    def __init__(self, figures: EventFigures) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        figures = self.figures
        started = CounterMetricFamily("camtrack_events", "Events started, by camera and kind.",
                                      labels=["camera", "kind"])
        for (camera, kind), count in sorted(figures.started().items()):
            started.add_metric([camera, kind], count)
        yield started
        opened = GaugeMetricFamily("camtrack_events_open", "Events open now, by camera.", labels=["camera"])
        for camera, count in sorted(figures.open().items()):
            opened.add_metric([camera], count)
        yield opened
        dropped = CounterMetricFamily("camtrack_event_changes_dropped", "Event changes a subscriber too slow "
                                      "to keep up lost (its oldest), by subscriber.", labels=["subscriber"])
        for name, count in sorted(figures.dropped().items()):
            dropped.add_metric([name], count)
        yield dropped
        delivered = CounterMetricFamily("camtrack_event_deliveries", "Event changes sent on by the webhook "
                                        "(sent, failed attempts, given_up) and MQTT (published, dropped).",
                                        labels=["output", "result"])
        for (output, result), count in sorted(figures.deliveries().items()):
            delivered.add_metric([output, result], count)
        yield delivered
        connected = GaugeMetricFamily("camtrack_mqtt_connected", "1 while connected to the --mqtt broker.")
        state = figures.mqtt_connected()
        if state is not None:
            connected.add_metric([], 1 if state else 0)
        yield connected


def add_routes(app: web.Application, cameras: Cameras,
               workers: Callable[[], list[dict[str, Any]]] | None = None,
               collectors: tuple[Collector, ...] = ()) -> None:
    """`GET /metrics`: the cameras', the workers' and any other `collectors`' metrics (an output's own)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(CameraCollector(cameras, workers))
    for collector in collectors:
        registry.register(collector)
    registry.register(PaceCollector(paced := {"refused": 0}))
    clients: OrderedDict[str, _Pace] = OrderedDict()
    page: list[Any] = [b"", -MAX_AGE]  # the rendered body, and when

    async def metrics(request: web.Request) -> web.Response:
        remote = request.remote or "?"
        pace = clients.pop(remote, None) or _Pace()
        clients[remote] = pace  # (the most recently seen last)
        if len(clients) > PACE_CLIENTS:
            clients.popitem(last=False)
        if not pace.take():
            paced["refused"] += 1
            now = time.monotonic()
            if now - pace.logged >= PACE_LOG_INTERVAL:
                pace.logged = now
                log.warning(remote, "/metrics requests paced for %s: more than %d at once or %g a second "
                            "(refused with 429 after %g s)", remote, PACE_BURST, PACE_RATE, REFUSAL_DELAY)
            # after a pause: a client that connects again at once gets one refusal a second per connection
            await asyncio.sleep(REFUSAL_DELAY)
            refusal = web.HTTPTooManyRequests(text="too many /metrics requests\n", headers={"Retry-After": "1"})
            refusal.force_close()  # (and the rest of its pipeline with it)
            raise refusal
        now = time.monotonic()
        if now - page[1] >= MAX_AGE:
            page[0], page[1] = generate_latest(registry), now
        response = web.Response(body=page[0])
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get("/metrics", metrics)


def _passthrough_metrics(cameras: Cameras) -> Iterator[Metric]:
    """What a passed-through camera's feed refused or dropped, and the bytes of it held."""
    refused = CounterMetricFamily("camtrack_passthrough_refused", "Times a camera's stream was refused for its "
                                  "size (larger than camtrack accepts: camtrack.media.sizes).", labels=["camera"])
    dropped = CounterMetricFamily("camtrack_passthrough_dropped", "Access units of a camera dropped, by why "
                                  "(oversize: larger than the largest accepted).", labels=["camera", "reason"])
    filler = CounterMetricFamily("camtrack_passthrough_filler_bytes", "Bytes of H.264 filler data stripped from "
                                 "a camera's access units.", labels=["camera"])
    held = GaugeMetricFamily("camtrack_passthrough_ring_bytes", "Bytes of a camera's own H.264 held for joining "
                             "viewers (bounded).", labels=["camera"])
    for camera in cameras:
        detail = camera.pipeline.source.detail()
        if detail is not None:
            refused.add_metric([camera.name], detail["refused"])
            dropped.add_metric([camera.name, "oversize"], detail["oversize"])
            filler.add_metric([camera.name], detail["filler_bytes"])
            held.add_metric([camera.name], detail["ring_bytes"])
    yield from (refused, dropped, filler, held)


def _audio_metrics(cameras: Cameras) -> Iterator[Metric]:
    """A camera's sound (camtrack.media.audio): its listeners, and its one Opus encoder's work."""
    listeners = GaugeMetricFamily("camtrack_audio_listeners", "Readers of a camera's sound now (WebRTC "
                                  "listeners; its encoder runs while there is one).", labels=["camera"])
    frames = CounterMetricFamily("camtrack_audio_frames", "Packets of a camera's sound, by how: encoded "
                                 "(20 ms Opus frames, once for every listener) or passed (its own Opus or "
                                 "G.711, untouched).",
                                 labels=["camera", "how"])
    encoders = CounterMetricFamily("camtrack_audio_encoders", "Opus encoders a camera's sound opened (one per "
                                   "run while it has Opus listeners, whatever their number).", labels=["camera"])
    seconds = CounterMetricFamily("camtrack_audio_encode_seconds", "Seconds a camera's sound spent decoding "
                                  "and encoding to Opus (on its own thread).", labels=["camera"])
    failures = CounterMetricFamily("camtrack_audio_failures", "Times a camera's sound source failed (then "
                                   "retried).", labels=["camera"])
    for camera in cameras:
        feed = camera.packets(MediaKind.AUDIO)
        if not isinstance(feed, AudioFeed):
            continue
        stats = feed.stats
        listeners.add_metric([camera.name], len(feed.consumers))
        frames.add_metric([camera.name, "encoded"], stats.encoded)
        frames.add_metric([camera.name, "passed"], stats.passed)
        encoders.add_metric([camera.name], stats.encoders)
        seconds.add_metric([camera.name], stats.encode_seconds)
        failures.add_metric([camera.name], stats.failures)
    yield from (listeners, frames, encoders, seconds, failures)


def _number(value: object) -> float:
    """A counter an output describes (a number, by its contract)."""
    return float(value) if isinstance(value, int | float) else 0.0


def _processing_metrics(cameras: Cameras) -> Iterator[Metric]:
    """The --process function of each camera that has one (camtrack.processing)."""
    calls = CounterMetricFamily("camtrack_process_calls", "Calls of the camera's --process function that ended.",
                                labels=["camera"])
    errors = CounterMetricFamily("camtrack_process_errors", "Calls of the --process function that raised or "
                                 "returned something unusable (the picture passed unprocessed).", labels=["camera"])
    stalls = CounterMetricFamily("camtrack_process_stalls", "Calls of the --process function that ran past "
                                 "--process-timeout (pictures passed unprocessed until it returned).", labels=["camera"])
    seconds = SummaryMetricFamily("camtrack_process_seconds", "Time the --process function took per call.",
                                  labels=["camera"])
    age = GaugeMetricFamily("camtrack_process_result_age_seconds", "Age of the newest data the --process function "
                            "returned: now minus its frame's capture time.", labels=["camera"])
    state = GaugeMetricFamily("camtrack_process_state", "1 for the --process function's state now (idle, ok, "
                              "failing, stalled).", labels=["camera", "state"])
    mode = GaugeMetricFamily("camtrack_process_mode", "1 for the --process function's mode now: data (the frame "
                             "left as it was: the video is the camera's, the data beside), drawn (its pictures "
                             "are the video), none (no call decided yet).", labels=["camera", "mode"])
    for camera in cameras:
        stage = camera.pipeline.processing
        if stage is None:
            continue
        name, stats = camera.name, stage.stats
        for each in ("data", "drawn", "none"):
            mode.add_metric([name, each], 1 if (stage.mode or "none") == each else 0)
        calls.add_metric([name], stats.calls)
        errors.add_metric([name], stats.errors)
        stalls.add_metric([name], stats.stalls)
        seconds.add_metric([name], stats.calls, stats.seconds)
        result_age = stage.result_age()
        if result_age is not None:
            age.add_metric([name], result_age)
        for each in ("idle", "ok", "failing", "stalled"):
            state.add_metric([name, each], 1 if stage.state == each else 0)
    yield from (calls, errors, stalls, seconds, age, state, mode)


class SseCollector(Collector):
    """The Server-Sent Events streams (camtrack.outputs.sse: a camera's --process data, the events' changes)."""

    def __init__(self, streams: EventStreams) -> None:
        self.streams = streams

    def collect(self) -> Iterator[Metric]:
        stats = self.streams.stats
        yield GaugeMetricFamily("camtrack_sse_clients", "Server-Sent Events streams open now "
                                "(/api/cameras/NAME/data and /api/events/stream).", value=len(self.streams.open))
        yield CounterMetricFamily("camtrack_sse_events", "Events written to Server-Sent Events streams (a "
                                  "camera's data, each the newest when its client could take one; the events' "
                                  "changes, each in order).", value=stats.events)
        refused = CounterMetricFamily("camtrack_sse_refused", "Server-Sent Events streams refused (503: at the "
                                      "cap of open streams, or shutting down) and cut off (took nothing for "
                                      "a while).", labels=["reason"])
        refused.add_metric(["cap"], stats.refused)
        refused.add_metric(["stalled"], stats.cut_off)
        yield refused
