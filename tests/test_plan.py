"""A camera's plan (camtrack.plan): one function settles the source, the mode with its reason and
what the source carries, for the command line and for create_app; /api/cameras shows the reason."""

from __future__ import annotations

import asyncio

import aiohttp

from camtrack import Config, create_app
from camtrack.app import CAMERAS
from camtrack.cli import config_from_args, parse, prepare_camera
from camtrack.plan import CameraPlan, plan_camera

from .test_passthrough import FPS, write_h264


def test_the_plan_says_the_mode_why_and_what_the_source_carries(tmp_path):
    source = str(write_h264(tmp_path / "clip.mp4", "main", frames=FPS))
    config = Config(source=source, width=640, height=480)
    plan = plan_camera(config.cameras[0], config)
    assert (plan.source, plan.mode, plan.reason) == (source, "passthrough", "it is H.264 without B-frames")
    assert plan.codec is not None and (plan.codec.codec, plan.codec.width, plan.codec.height) == ("h264", 320, 240)
    config = Config(source=str(write_h264(tmp_path / "b.mp4", "main", bf=2, frames=FPS)))
    assert plan_camera(config.cameras[0], config).mode == "transcode"
    config = Config(source="pattern")
    assert plan_camera(config.cameras[0], config) == CameraPlan("pattern", "transcode",
                                                                "it gives pictures, not encoded video")
    config = Config(source=source, mode="transcode")
    assert plan_camera(config.cameras[0], config) == CameraPlan(source, "transcode", "asked for")
    config = Config(source=source, encoder="per-viewer")
    assert plan_camera(config.cameras[0], config) == CameraPlan(source, "per-viewer",
                                                                "each viewer's own encoder wants pictures")


async def test_the_command_lines_plan_is_the_apps_and_api_cameras_says_why(tmp_path, serve):
    source = str(write_h264(tmp_path / "clip.mp4", "main", frames=FPS))
    config = config_from_args(*parse(["--source", source, "--width", "320", "--height", "240"])[1:])
    plans: dict[str, CameraPlan] = {}
    assert prepare_camera(config, config.cameras[0], plans) is None
    # the settings say what was decided; the plan also says why, and create_app takes it as it is
    assert config.cameras[0].mode == "passthrough" and plans["default"].reason == "it is H.264 without B-frames"
    app = create_app(config, plans)
    assert app[CAMERAS].first.plan is plans["default"]
    assert app[CAMERAS].first.describe()["reason"] == "it is H.264 without B-frames"
    # and an embedding program's Config is planned by create_app, with the same reason
    url, _ = await serve(source=source, width=320, height=240)
    async with aiohttp.ClientSession() as http, http.get(url.replace("/ws", "/api/cameras")) as response:
        camera = (await response.json())["cameras"][0]
    assert (camera["mode"], camera["reason"]) == ("passthrough", "it is H.264 without B-frames")


async def test_every_mode_builds_the_same_parts_and_the_endpoints_read_only_them(tmp_path, serve):
    """Whatever the plan's mode, a camera's pipeline has the same parts (camtrack.pipeline): one
    type of source status, a frame feed, packets by (kind, tier), outputs; /api/cameras and /healthz
    show the same keys for each."""
    from camtrack.media.feeds import Transport
    from camtrack.media.packet import MediaKind
    from camtrack.pipeline import SourceStatus

    source = str(write_h264(tmp_path / "clip.mp4", "main", frames=2 * FPS))
    keys = {}
    for mode, encoder in (("passthrough", "shared"), ("transcode", "shared"), ("per-viewer", "per-viewer")):
        url, app = await serve(source=source, width=320, height=240, encoder=encoder,
                               mode="transcode" if mode == "per-viewer" else mode)
        camera = app[CAMERAS].first
        pipeline = camera.pipeline
        assert pipeline.plan.mode == mode and type(pipeline.source) is SourceStatus
        assert (pipeline.packets(MediaKind.VIDEO) is None) == (mode == "per-viewer")
        assert pipeline.packets(MediaKind.AUDIO) is None and pipeline.outputs == {}
        # pixels for JPEG whatever the mode: the capture's, or the camera's own packets decoded
        jpeg, client = camera.jpeg.at(80), object()
        jpeg.attach(client)
        assert (await asyncio.wait_for(jpeg.next_jpeg(), 20)).item is not None
        jpeg.detach(client)
        if mode != "per-viewer":
            reader = camera.reader(Transport.WEBSOCKET)
            encoded, _ = await reader.next()
            assert encoded.keyframe and encoded.codec.codec == "h264"
            assert pipeline.source.state == "up" and pipeline.source.watched and pipeline.source.opens == 1
            reader.close()
        async with aiohttp.ClientSession() as http:
            async with http.get(url.replace("/ws", "/api/cameras")) as response:
                described = (await response.json())["cameras"][0]
            async with http.get(url.replace("/ws", "/healthz")) as response:
                health = (await response.json())["sources"]["default"]
        assert described["mode"] == mode
        keys[mode] = (set(described), set(health))
        assert (health["passthrough"] is not None) == (mode == "passthrough")
        assert (health["encoder"] is not None) == (mode == "transcode")
    assert keys["passthrough"] == keys["transcode"] == keys["per-viewer"]
