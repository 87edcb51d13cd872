"""The aiohttp application: the page, the outputs of every camera, health, and shutdown."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from .access import HostCheck, TrustedProxies, is_loopback, origin_check
from .cameras import Camera, Cameras
from .config import CameraConfig, Config
from .events import api as events_api
from .events.figures import EventOutputs
from .events.mqtt import MqttPublisher
from .events.recording import RecordingTrigger
from .events.watcher import EventWatcher, MotionSettings
from .events.webhook import Webhook
from .media.feeds import Transport
from .outputs import data, metrics, mjpeg, sse
from .outputs.janus import JanusPublisher
from .outputs.recording import EventCalls, RecorderSettings, Recordings, Retention
from .outputs.recording import api as recordings_api
from .outputs.recording.metrics import RecordingCollector
from .outputs.rtsp import RtspServer, RtspSettings
from .outputs.rtsp.metrics import RtspCollector
from .outputs.webrtc import whep
from .outputs.webrtc.ice import IceContext, resolve_addresses, restrict_host_addresses
from .outputs.webrtc.peer import LocalPeers
from .outputs.webrtc.signaling import websocket_handler
from .outputs.webrtc.udpmux import PortTaken, UdpMux
from .plan import CameraPlan
from .seams import check_hooks
from .workers.pool import WorkerPeers, WorkerPool, worker_count

logger = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
CAMERAS = web.AppKey("cameras", Cameras)
ICE = web.AppKey("ice", IceContext)
RTSP = web.AppKey("rtsp", RtspServer)
EVENTS = web.AppKey("events", EventOutputs)
RECORDINGS = web.AppKey("recordings", Recordings)


def create_app(config: Config, plans: Mapping[str, CameraPlan] | None = None) -> web.Application:
    """Build the camtrack application for `config`; nothing runs until it is started. `plans`: the
    cameras' plans (camtrack.plan) already made, by name (the command line's); the others are made
    here."""
    hosts = HostCheck(config.host, config.allow_hosts)
    # the client a trusted proxy names first, so that the Host check's log names it too
    guards = [TrustedProxies(config.trusted_proxies).middleware(), hosts.middleware()]
    app = web.Application(middlewares=guards if config.base_path == "/" else [])
    cameras = Cameras(config, plans)
    app[CONFIG] = config
    app[CAMERAS] = cameras
    #: the servers, TURN credentials and (once started) the shared UDP port of every peer
    ice = app[ICE] = IceContext(config.ice_servers, config.turn_secret)
    #: what makes the viewers' peers: here, or (once the pool started) in the worker processes
    local_peers = ice.peers = LocalPeers(config, ice)
    #: the events of every camera, and the outputs that send them on (camtrack.events)
    events = app[EVENTS] = EventOutputs()

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(config.static_dir / "index.html", headers={"Cache-Control": "no-cache"})

    async def favicon(request: web.Request) -> web.FileResponse:
        """The page's icon (static/favicon.svg) where every browser and tool looks for one first."""
        return web.FileResponse(config.static_dir / "favicon.svg",
                                headers={"Content-Type": "image/svg+xml", "Cache-Control": "max-age=86400"})

    async def api_cameras(request: web.Request) -> web.Response:
        """The cameras, in order, with their state and viewers."""
        return web.json_response({"cameras": [camera.describe() for camera in cameras]})

    async def healthz(request: web.Request) -> web.Response:
        """Source states and viewer counts; 503 while a watched source is down."""
        sources = {}
        down = False
        for camera in cameras:
            source = camera.pipeline.source
            watched = source.watched
            down |= watched and source.state in ("retrying", "stalled")
            janus = camera.pipeline.outputs.get("janus")
            recorder = camera.pipeline.outputs.get("recorder")
            encoder = camera.pipeline.encoders().get(camera.settings.codec)
            sources[camera.name] = {**camera.describe(), "watched": watched, "passthrough": source.detail(),
                                    "encoder": None if encoder is None else {
                                        "running": encoder.running, "viewers": len(encoder.consumers),
                                        "frames": encoder.stats.frames, "keyframes": encoder.stats.keyframes},
                                    "janus": janus.describe() if janus is not None else None,
                                    "events": watcher.describe() if (watcher := camera.pipeline.outputs.get(
                                        "events")) is not None else None,
                                    "recorder": recorder.describe() if recorder is not None else None}
        body = {
            "status": "down" if down else "ok",
            "viewers": cameras.viewer_count,
            "peers": sum(len(c.viewers[Transport.WEBSOCKET]) + len(c.viewers[Transport.WHEP]) for c in cameras),
            "sources": sources,
            "webrtc": None if ice.mux is None else {
                "port": ice.mux.port, "peers": ice.mux.peers, "routes": ice.mux.routes,
                "received": ice.mux.stats.received, "dropped": ice.mux.stats.strangers + ice.mux.stats.stray_stun},
            "workers": pool.describe() if pool is not None else None,
            "events": events.describe(),
            "threads": threading.active_count(),
            "tasks": len(asyncio.all_tasks()),
        }
        return web.json_response(body, status=503 if down else 200)

    app.router.add_get("/", index)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/cameras", api_cameras)
    app.router.add_get("/ws", websocket_handler(config, cameras, ice))
    app.router.add_post("/ws", origin_check(config.allow_origins))  # the page asks why /ws refused it
    app.router.add_static("/static/", config.static_dir)
    whep.add_routes(app, config, cameras, ice)
    mjpeg.add_routes(app, config, cameras)
    #: Server-Sent Events streams, of a camera's --process data and of the events' changes: one cap
    #: for both, ended at shutdown (after the bus closed, so the events' streams carry its last changes)
    sse_streams = sse.EventStreams()
    events_api.add_routes(app, config, cameras, events.bus, sse_streams)
    data.add_routes(app, config, cameras, sse_streams)
    undo_ice: list[Callable[[], None]] = []
    #: every camera over RTSP too (--rtsp-port; 0: none), started with the app
    rtsp: RtspServer[Camera] | None = None
    if config.rtsp_port:
        rtsp = app[RTSP] = RtspServer(cameras, RtspSettings(
            config.host, config.rtsp_port, config.rtsp_path, config.token, config.idle_timeout, config.header_timeout))
    #: the worker processes (--workers 0 on a machine of several cores, or > 1); else viewers are served here
    pool: WorkerPool | None = None
    #: the recorders of the cameras with --record, and their directories (started with the app)
    recordings = app[RECORDINGS] = Recordings(Retention(
        max_age_days=config.record_max_age, max_bytes=int(config.record_max_size * 1024 * 1024),
        min_free_bytes=int(config.record_min_free * 1024 * 1024)))
    for camera in cameras:
        if camera.settings.record:
            recordings.add(camera, camera.settings.record,
                           RecorderSettings(pre_roll=camera.settings.pre_roll, post_roll=camera.settings.post_roll,
                                            segment=camera.settings.record_segments))
    recordings_api.add_routes(app, config, cameras, recordings)
    metrics.add_routes(app, cameras, workers=lambda: pool.describe() if pool is not None else [],
                       collectors=(*((RtspCollector(rtsp),) if rtsp is not None else ()),
                                   metrics.EventCollector(events), metrics.SseCollector(sse_streams),
                                   RecordingCollector(recordings)))

    def event_kind(event_id: str) -> str | None:
        event = events.bus.get(event_id)
        return event.kind if event is not None else None

    async def on_startup(app: web.Application) -> None:
        check_hooks()  # the ICE gate and RTCP limits depend on them: refuse to start without them
        cameras.load.start()
        if not config.token and not is_loopback(config.host):
            logger.warning("no --token: anyone who can reach %s:%d can watch", config.host, config.port)
        addresses: list[str] = []
        if config.ice_addresses:
            addresses = resolve_addresses(config.ice_addresses)
            undo_ice.append(restrict_host_addresses(addresses))
            logger.info("offering ICE host candidates on %s only", ", ".join(addresses))
        if config.webrtc_port:
            # one address offered: the socket binds it, so every reply leaves from the address offered
            mux = UdpMux(config.webrtc_port, config.public_addresses, addresses[0] if len(addresses) == 1 else None)
            try:
                await mux.open()
            except OSError as exc:
                raise PortTaken(exc.errno, f"cannot bind the WebRTC UDP port {config.webrtc_port} "
                                         f"(--webrtc-port): {exc.strerror or exc}") from None
            ice.mux = mux
            logger.info("WebRTC on UDP port %d for every viewer%s", mux.port,
                        f", also offered at {', '.join(config.public_addresses)}" if config.public_addresses else "")
        if rtsp is not None:
            try:
                await rtsp.start()
            except OSError as exc:
                # (as go2rtc does: the rest of the server is still worth having)
                logger.warning("no RTSP: cannot listen on TCP port %d (--rtsp-port; 0 turns RTSP off): %s",
                               config.rtsp_port, exc.strerror or exc)
            else:
                logger.info("RTSP on port %d: rtsp://HOST:%d%sNAME (%s)", rtsp.port, rtsp.port, config.rtsp_path,
                            ", ".join(camera.name for camera in cameras))
        count = worker_count(config)
        if count > 1 and config.encoder == "shared":
            nonlocal pool
            pool = WorkerPool(config, cameras, count, addresses, ice.mux, on_demand=config.workers == 0)
            await pool.start()
            ice.peers = WorkerPeers(pool, local_peers)
        for camera in cameras:
            settings = camera.settings
            if settings.janus_url and settings.janus_room is not None:  # (config checks that both are set)
                publisher = JanusPublisher(camera, settings.janus_url, settings.janus_room, settings.janus_pin,
                                           settings.janus_display, config.ice_servers, ice=ice)
                camera.pipeline.start_output("janus", publisher)
            processing = camera.pipeline.processing
            if processing is not None and settings.process_events != "off":
                camera.pipeline.start_output("events", EventWatcher(
                    events.bus, camera.name, processing,
                    MotionSettings(settings.motion_event_threshold, settings.motion_event_duration,
                                   settings.motion_event_gap), keep_running=events_always(settings, config)))
        if config.webhook:
            events.webhook = Webhook(events.bus, config.webhook)
            events.webhook.start()
        if config.mqtt:
            events.mqtt = MqttPublisher(events.bus, config.mqtt, [camera.name for camera in cameras])
            events.mqtt.start()
        if recordings.recorders:
            await recordings.load()  # (closing the clips a crash left unfinished first)
            for camera in cameras:
                recorder = recordings.recorders.get(camera.name)
                if recorder is not None:
                    camera.pipeline.start_output("recorder", recorder)
                    # every event of the camera (motion, --process, HTTP) is a clip's
                    camera.pipeline.start_output("recording-trigger", RecordingTrigger(
                        events.bus, camera.name, EventCalls(recorder, event_kind)))

    def events_always(settings: CameraConfig, config: Config) -> bool:
        """Whether the camera is read and processed for its events watched or not: asked for, or
        (`auto`) when its events are for someone away (a clip, a webhook, MQTT)."""
        if settings.process_events == "auto":
            return bool(settings.record or config.webhook or config.mqtt)
        return settings.process_events == "always"

    async def on_shutdown(app: web.Application) -> None:
        # a client that never reads can stall its hang-up forever, and the whole stop must fit in 5 s
        # (camtrack.cli.serve): wait briefly, then the runner cancels the handlers and closes what is left
        grace = 1.0
        if pool is not None:
            pool.stopping = True  # (a worker that exits now, told SIGTERM with us, is not started again)
        if rtsp is not None:
            await rtsp.stop()  # (listening no more; its clients end with the others below)
        # every open event ends (and event streams with it); the webhook, MQTT and the streams send that, briefly
        events.bus.close()
        outputs = [output.stop() for output in (events.webhook, events.mqtt) if output is not None]
        stopping = asyncio.gather(*outputs, sse_streams.shutdown())
        viewers = cameras.everyone  # viewers and sessions not viewers yet, of every transport
        for viewer in viewers:
            viewer.end("server shutting down")
        if viewers:
            try:
                await asyncio.wait_for(asyncio.gather(*(v.closed() for v in viewers), return_exceptions=True), grace)
            except TimeoutError:
                logger.warning("some viewers did not hang up within %g s; closing them", grace)
        await stopping

    async def on_cleanup(app: web.Application) -> None:
        if pool is not None:
            ice.peers = local_peers
            await pool.stop()
        await cameras.load.stop()
        await cameras.close()
        if ice.mux is not None:
            ice.mux.close()
            ice.mux = None
        while undo_ice:
            undo_ice.pop()()

    async def add_fqdn(app: web.Application) -> None:
        # socket.getfqdn() may ask DNS: in a thread nobody waits for (not even shutdown)
        threading.Thread(target=hosts.add_fqdn, name="camtrack fqdn", daemon=True).start()

    app.on_startup.append(add_fqdn)
    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app if config.base_path == "/" else under_prefix(app, config.base_path, guards)


def under_prefix(app: web.Application, prefix: str, middlewares: list[Any]) -> web.Application:
    """An application serving `app` under `prefix` ("/camera/"), with `middlewares` on every path."""
    root = web.Application(middlewares=middlewares)
    root[CONFIG], root[CAMERAS], root[ICE], root[EVENTS] = app[CONFIG], app[CAMERAS], app[ICE], app[EVENTS]

    async def add_slash(request: web.Request) -> web.StreamResponse:
        raise web.HTTPPermanentRedirect(prefix + (f"?{request.query_string}" if request.query_string else ""))

    root.router.add_get(prefix.rstrip("/"), add_slash)  # the page's relative URLs need the final slash
    root.add_subapp(prefix, app)
    return root
