"""`GET /api/cameras/{name}/data`: what a camera's --process function returns (camtrack.processing),
as Server-Sent Events (camtrack.outputs.sse), each the newest result with the frame it belongs to:

    data: {"camera": "porch", "frame": 1234, "time": 1767000000.123, "data": {...}}

The stream keeps the camera's processing running (as a viewer keeps its video). A client slower
than the function skips to the newest result; the token, Host and Origin rules are the video's.
"""

from __future__ import annotations

import json

from aiohttp import web

from ..access import cors_headers, find_camera
from ..config import Config
from .directory import Cameras
from .sse import Event, EventStreams


def add_routes(app: web.Application, config: Config, cameras: Cameras, streams: EventStreams) -> None:
    """The route, its streams counted and capped in `streams` (ended at shutdown by its owner)."""

    async def data(request: web.Request) -> web.StreamResponse:
        headers = cors_headers(request, config.allow_origins)  # (403: a page of an origin not allowed)
        camera = find_camera(request, cameras, config.token, request.match_info["name"], headers=headers)
        stage = camera.pipeline.processing
        if stage is None:
            return web.json_response({"error": f"camera {camera.name} has no --process function: it has no data "
                                               f"(docs/processing.md)"}, status=404, headers=headers)
        what = f"data of {camera.name}"
        streams.check(request, what, headers)
        after = 0
        name = json.dumps(camera.name)

        async def next_event() -> Event:
            nonlocal after
            result = await stage.next_result(after)  # (the newest: a slow client skips to it)
            after = result.frame
            # (the data's JSON made once on the processing thread, for every client)
            return Event(f'{{"camera":{name},"frame":{result.frame},"time":{json.dumps(result.time)},'
                         f'"data":{result.text}}}', id=str(result.frame))

        reader = object()
        stage.attach(reader)  # (the function runs while the stream reads it, viewers or not)
        try:
            return await streams.serve(request, next_event, what, headers)
        finally:
            stage.detach(reader)

    app.router.add_get("/api/cameras/{name}/data", data)
