"""The events over HTTP: start and end one (`POST /api/cameras/NAME/events`, `.../events/ID/end`),
list the recent ones (`GET /api/events`) and follow every change as Server-Sent Events
(`GET /api/events/stream`, written by camtrack.outputs.sse: every change in order, and after a
reconnection those after its Last-Event-ID that the bus still holds). Reading needs the token as
video does; starting and ending need it too, and a browser page of another origin than the server's
own or --allow-origin's is refused (the Host check covers every route)."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from aiohttp import web

from ..access import cors_headers, find_camera, require_token
from ..config import Config
from ..connections import read_body
from ..outputs import sse
from ..outputs.directory import Cameras
from .bus import EventBus, SubscriptionClosed, TooManyOpen
from .model import HTTP, Change, Event, kind_problem

logger = logging.getLogger(__name__)

#: the largest body of a POST
MAX_BODY = 16 * 1024
#: the longest duration an HTTP event may ask for; one without a duration ends after this too
MAX_DURATION = 3600.0
#: events a listing returns at most (and by default)
MAX_PAGE, PAGE = 1000, 100
#: changes waiting for one SSE client: a client that does not read loses its oldest
STREAM_QUEUE = 256
#: seconds a write to one SSE client may take before it is cut off (the data's streams wait longer:
#: a client behind here is losing changes already)
WRITE_TIMEOUT = 10.0
BODY_KEYS = {"kind", "duration", "details"}


def bad_request(reason: str, headers: dict[str, str] | None = None) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": reason}) + "\n", content_type="application/json",
                              headers=headers)


def parse_start(body: bytes) -> tuple[str, float | None, dict[str, Any]]:
    """(kind, duration, details) of a start's body (empty: an "http" event); ValueError says why not."""
    if not body.strip():
        return HTTP, None, {}
    try:
        given = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"the body is not JSON: {exc}") from None
    if not isinstance(given, dict):
        raise ValueError('the body must be a JSON object like {"kind": "doorbell", "duration": 30}')
    unknown = set(given) - BODY_KEYS
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r:.40}: the keys are kind, duration, details")
    kind = given.get("kind", HTTP)
    problem = kind_problem(kind)
    if problem is not None:
        raise ValueError(problem)
    duration = given.get("duration")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float))
                                 or not math.isfinite(duration) or not 0 < duration <= MAX_DURATION):
        raise ValueError(f"duration must be seconds, more than 0 and at most {MAX_DURATION:g}, not {duration!r:.40}")
    details = given.get("details", {})
    if not isinstance(details, dict):
        raise ValueError(f"details must be a JSON object, not {details!r:.40}")
    return kind, None if duration is None else float(duration), details


def sse_event(change: Change) -> sse.Event:
    """A change as a Server-Sent Event: its type, its `seq` as the id (the client's Last-Event-ID)."""
    return sse.Event(json.dumps(change.to_json()), event=change.action, id=str(change.seq))


def last_event_id(request: web.Request) -> int | None:
    """The `seq` a reconnecting client saw last (its Last-Event-ID), if it gives one that is a `seq`."""
    given = request.headers.get("Last-Event-ID", "").strip()
    return int(given) if given.isdigit() and len(given) < 20 else None


def add_routes(app: web.Application, config: Config, cameras: Cameras, bus: EventBus,
               streams: sse.EventStreams) -> None:
    """The events' routes (see the module's docstring); the change streams are counted and capped in
    `streams` (ended at shutdown by its owner, after the bus closed: the last changes go out)."""

    def write_access(request: web.Request) -> tuple[str, dict[str, str]]:
        """The camera a write names, checked: origin (403), token (401), camera (404)."""
        headers = cors_headers(request, config.allow_origins)
        camera = find_camera(request, cameras, config.token, request.match_info["name"], headers=headers)
        return camera.name, headers

    async def start(request: web.Request) -> web.Response:
        camera, headers = write_access(request)
        body = await read_body(request, MAX_BODY, config.header_timeout, headers=headers)
        if body.strip() and request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(text="the body must be Content-Type: application/json\n",
                                               headers=headers)
        try:
            kind, duration, details = parse_start(body)
        except ValueError as exc:
            raise bad_request(str(exc), headers) from None
        try:
            event = bus.start(camera, kind, source=HTTP, details=details,
                              duration=MAX_DURATION if duration is None else duration)
        except TooManyOpen as exc:
            raise web.HTTPTooManyRequests(text=json.dumps({"error": str(exc)}) + "\n",
                                          content_type="application/json", headers=headers) from None
        return web.json_response({"id": event.id, "event": event.to_json()}, status=201, headers={
            **headers, "Location": f"{request.path}/{event.id}"})

    async def end(request: web.Request) -> web.Response:
        camera, headers = write_access(request)
        event = bus.get(request.match_info["id"])
        if event is None or event.camera != camera:
            raise web.HTTPNotFound(text=json.dumps({"error": f"camera {camera} has no event "
                                                             f"{request.match_info['id'][:80]!r}"}) + "\n",
                                   content_type="application/json", headers=headers)
        if event.source != HTTP:
            raise web.HTTPConflict(text=json.dumps({"error": f"event {event.id} is a {event.source} event: only "
                                                             f"its source ends it"}) + "\n",
                                   content_type="application/json", headers=headers)
        if event.ongoing:
            bus.end(event.id)
        return web.json_response({"id": event.id, "event": event.to_json()}, headers=headers)

    async def listing(request: web.Request) -> web.Response:
        require_token(request, config.token)
        query = request.query
        camera, kind = query.get("camera"), query.get("kind")
        if camera is not None and cameras.get(camera) is None:
            raise bad_request(f"no camera {camera[:80]!r}")
        try:
            since = float(query["since"]) if "since" in query else None
            limit = int(query.get("limit", PAGE))
        except ValueError:
            raise bad_request("since must be seconds since the epoch, limit a whole number") from None
        if since is not None and not math.isfinite(since):
            raise bad_request("since must be a finite number of seconds since the epoch")
        if not 1 <= limit <= MAX_PAGE:
            raise bad_request(f"limit must be between 1 and {MAX_PAGE}")
        page: list[Event] = []
        try:
            for event in bus.recent(camera, kind, since, query.get("before")):
                if len(page) == limit + 1:
                    break
                page.append(event)
        except KeyError:
            raise bad_request("before must be the id of an event still listed (the last page's \"next\")") from None
        more = len(page) > limit
        page = page[:limit]
        return web.json_response({"events": [event.to_json() for event in page],
                                  "next": page[-1].id if more else None})

    async def stream(request: web.Request) -> web.StreamResponse:
        require_token(request, config.token)
        camera = request.query.get("camera")
        if camera is not None and cameras.get(camera) is None:
            raise bad_request(f"no camera {camera[:80]!r}")
        streams.check(request, "events")  # (503 at the cap, before subscribing)
        subscription = bus.subscribe("sse", STREAM_QUEUE, camera, after=last_event_id(request))

        async def next_event() -> sse.Event:
            try:
                return sse_event(await subscription.get())
            except SubscriptionClosed:
                raise sse.SourceEnded from None

        def pending() -> sse.Event | None:
            change = subscription.get_nowait()
            return None if change is None else sse_event(change)

        try:
            return await streams.serve(request, next_event, "events", pending=pending, stall_timeout=WRITE_TIMEOUT)
        finally:
            subscription.close()

    async def preflight(request: web.Request) -> web.Response:
        headers = cors_headers(request, config.allow_origins)
        return web.Response(status=204, headers={**headers, "Access-Control-Allow-Methods": "POST, OPTIONS",
                                                 "Access-Control-Allow-Headers": "Content-Type, Authorization",
                                                 "Access-Control-Max-Age": "86400"})

    app.router.add_post("/api/cameras/{name}/events", start)
    app.router.add_route("OPTIONS", "/api/cameras/{name}/events", preflight)
    app.router.add_post("/api/cameras/{name}/events/{id}/end", end)
    app.router.add_route("OPTIONS", "/api/cameras/{name}/events/{id}/end", preflight)
    app.router.add_get("/api/events", listing)
    app.router.add_get("/api/events/stream", stream)
