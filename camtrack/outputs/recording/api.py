"""`/api/recordings`: the clips of every --record directory, to list, fetch (with HTTP ranges),
see (a thumbnail of the first keyframe), delete and protect from retention.

Behind the rules of live video: the token (401, as MJPEG), the Host check (the app's middleware),
and for what changes something (DELETE, protect) the Origin check of the websocket (403), so that
no other site's page can delete clips with the browser of someone who may.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from pathlib import Path
from typing import Any

import av
import cv2
from aiohttp import web

from ...access import REFUSAL, origin_refusal, require_token
from ...config import Config
from ..directory import Cameras
from . import Recordings
from .store import ID, Store, search

logger = logging.getLogger(__name__)

#: the most clips one page of the list holds
MAX_LIMIT = 500
#: the thumbnail's width (at most), and thumbnails made at once (each decodes one picture)
THUMBNAIL_WIDTH = 320
THUMBNAILS_AT_ONCE = 2


def when(what: str, value: str | None) -> float | None:
    """A time given as seconds since the epoch or ISO 8601 (UTC unless it says), else 400."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{what} must be seconds since the epoch or an ISO 8601 time\n") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def whole(what: str, value: str | None, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{what} must be a whole number\n") from None
    if not low <= number <= high:
        raise web.HTTPBadRequest(text=f"{what} must be between {low} and {high}\n")
    return number


def thumbnail(path: Path, cache: Path | None) -> bytes:
    """A JPEG of the clip's first picture (its first keyframe, decoded alone), `cache`d if given.
    Runs off the event loop."""
    if cache is not None and cache.exists():
        return cache.read_bytes()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONKEY"
        frame = next(container.decode(stream))
        image: Any = frame.to_ndarray(format="bgr24")
    height, width = image.shape[:2]
    if width > THUMBNAIL_WIDTH:
        image = cv2.resize(image, (THUMBNAIL_WIDTH, max(2, height * THUMBNAIL_WIDTH // width)),
                           interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise ValueError("the picture would not encode")
    data = encoded.tobytes()
    if cache is not None:
        try:
            cache.write_bytes(data)
        except OSError:
            pass  # (a full or read-only disk: made again next time)
    return data


def add_routes(app: web.Application, config: Config, cameras: Cameras, recordings: Recordings) -> None:
    """The routes of `/api/recordings` (docs/recording.md)."""

    thumbnails = asyncio.Semaphore(THUMBNAILS_AT_ONCE)

    def check(request: web.Request, changes: bool = False) -> None:
        require_token(request, config.token)
        if changes:
            refusal = origin_refusal(request, config.allow_origins)
            if refusal is not None:
                raise web.HTTPForbidden(text=f"refused: {REFUSAL % refusal}\n")

    def clip_of(request: web.Request) -> tuple[Store, dict[str, Any]]:
        clip_id = request.match_info["id"]
        store = recordings.store_of(clip_id) if ID.match(clip_id) else None
        info = store.get(clip_id) if store is not None else None
        if store is None or info is None:
            raise web.HTTPNotFound(text="no such recording\n")
        return store, info

    async def listing(request: web.Request) -> web.Response:
        check(request)
        query = request.query
        camera = query.get("camera") or None
        if camera is not None and camera not in {c.name for c in cameras}:
            raise web.HTTPNotFound(text="no such camera\n")
        limit = whole("limit", query.get("limit"), 50, 1, MAX_LIMIT)
        page = whole("page", query.get("page"), 1, 1, 1_000_000)
        found = list(search(list(recordings.stores.values()), camera, query.get("kind") or None,
                            when("from", query.get("from")), when("to", query.get("to"))))
        chosen = found[(page - 1) * limit:page * limit]
        return web.json_response({"recordings": chosen, "total": len(found), "page": page, "limit": limit,
                                  "recorders": {name: recorder.describe()
                                                for name, recorder in recordings.recorders.items()}})

    async def fetch(request: web.Request) -> web.FileResponse:
        check(request)
        store, info = clip_of(request)
        path = store.path(info["id"], ".mp4.part" if info.get("recording") else ".mp4")
        if not path.exists():
            path = store.path(info["id"])
            if not path.exists():
                raise web.HTTPNotFound(text="no such recording\n")
        disposition = "attachment" if request.query.get("download") else "inline"
        return web.FileResponse(path, headers={
            "Content-Type": "video/mp4", "Cache-Control": "no-cache",
            "Content-Disposition": f'{disposition}; filename="{info["id"]}.mp4"'})

    async def thumb(request: web.Request) -> web.Response:
        check(request)
        store, info = clip_of(request)
        path = store.path(info["id"], ".mp4.part" if info.get("recording") else ".mp4")
        async with thumbnails:
            try:
                data = await asyncio.to_thread(thumbnail, path, None if info.get("recording")
                                               else store.path(info["id"], ".jpg"))
            except (OSError, ValueError, StopIteration, av.FFmpegError) as exc:
                logger.info("recordings: no thumbnail of %s: %s", info["id"], exc)
                raise web.HTTPNotFound(text="this recording has no picture yet\n") from None
        return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    async def delete(request: web.Request) -> web.Response:
        check(request, changes=True)
        store, info = clip_of(request)
        if info.get("recording"):
            raise web.HTTPConflict(text="this recording is still being written\n")
        await asyncio.to_thread(store.delete, info["id"])
        logger.info("recordings: %s deleted by %s", info["id"], request.remote)
        return web.Response(status=204)

    async def protect(request: web.Request) -> web.Response:
        check(request, changes=True)
        store, info = clip_of(request)
        protected = request.method == "POST"
        updated = await asyncio.to_thread(store.update, info["id"], protected=protected)
        if updated is None:
            raise web.HTTPNotFound(text="no such recording\n")
        return web.json_response(updated)

    async def page(request: web.Request) -> web.FileResponse:
        """The recordings page (static/recordings.html): it asks the API, with the tab's token."""
        return web.FileResponse(config.static_dir / "recordings.html", headers={"Cache-Control": "no-cache"})

    app.router.add_get("/recordings", page)
    app.router.add_get("/api/recordings", listing)
    app.router.add_get("/api/recordings/{id}", fetch)
    app.router.add_delete("/api/recordings/{id}", delete)
    app.router.add_get("/api/recordings/{id}/thumbnail.jpg", thumb)
    app.router.add_post("/api/recordings/{id}/protect", protect)
    app.router.add_delete("/api/recordings/{id}/protect", protect)
