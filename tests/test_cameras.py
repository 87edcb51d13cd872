"""Several cameras, each with every output; /api/cameras; /metrics; the config file."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from camtrack.app import CAMERAS
from camtrack.cli import config_from_args, main, parse
from camtrack.client import Viewer
from camtrack.config import CameraConfig

from .conftest import eventually
from .test_mjpeg import read_parts


def two_cameras() -> list[CameraConfig]:
    return [CameraConfig("front", "pattern", width=320, height=240, codec="h264"),
            CameraConfig("back", "pattern", width=256, height=192, codec="vp8", max_viewers=1)]


async def test_each_camera_has_its_own_outputs(serve):
    url, app = await serve(cameras=two_cameras())
    root = url.removesuffix("/ws")
    cameras = app[CAMERAS]
    front, back = cameras.by_name["front"], cameras.by_name["back"]
    async with aiohttp.ClientSession() as http:
        async with http.get(root + "/api/cameras") as r:
            listed = (await r.json())["cameras"]
        assert [c["name"] for c in listed] == ["front", "back"]
        assert listed[1]["codec"] == "vp8" and listed[1]["width"] == 256 and listed[1]["state"] == "idle"

        default, named = Viewer(url), Viewer(url + "?camera=back")
        await asyncio.gather(default.connect(), named.connect())
        assert default.hello["camera"] == "front" and named.hello["camera"] == "back"
        a, b = await asyncio.gather(default.frames(10), named.frames(10))
        assert (a[-1].width, a[-1].height) == (320, 240) and (b[-1].width, b[-1].height) == (256, 192)
        assert "VP8" in named.answer_sdp and "H264" in default.answer_sdp

        # back allows one viewer: another one, over any transport, is refused
        async with http.get(root + "/cameras/back/mjpeg") as r:
            assert r.status == 503
        async with http.ws_connect(url + "?camera=back") as ws:
            assert await ws.receive_json() == {"type": "error", "message": "server full"}
        # an unknown camera is refused before the upgrade
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url + "?camera=nope")
        assert refused.value.status == 404
        async with http.get(root + "/cameras/front/snapshot.jpg") as r:
            assert r.status == 200
        async with http.get(root + "/api/cameras") as r:
            listed = (await r.json())["cameras"]
        assert listed[0]["viewers"]["websocket"] == 1 and listed[1]["viewers"]["websocket"] == 1
        assert listed[0]["state"] == listed[1]["state"] == "up"
    assert front.stream.runs == back.stream.runs == 1
    await asyncio.gather(default.close(), named.close())
    await eventually(lambda: not front.stream.running and not back.stream.running)


async def test_each_camera_opens_only_while_watched(serve):
    url, app = await serve(cameras=two_cameras())
    front, back = app[CAMERAS].by_name["front"], app[CAMERAS].by_name["back"]
    viewer = Viewer(url + "?camera=back")
    await viewer.connect()
    await viewer.frames(3)
    assert back.stream.running and not front.stream.running
    await viewer.close()


async def test_metrics(serve):
    url, app = await serve(cameras=two_cameras())
    root = url.removesuffix("/ws")
    viewer = Viewer(url)
    await viewer.connect()
    await viewer.frames(20)
    async with aiohttp.ClientSession() as http:
        async with http.get(root + "/mjpeg") as r:
            await read_parts(r, 3)
            async with http.get(root + "/metrics") as m:
                assert m.status == 200 and m.content_type == "text/plain"
                text = await m.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(name: str, **labels) -> float:
        for sample in families[name].samples:
            if sample.name.endswith(("_total", "_count")) or sample.name == name:
                if all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        raise KeyError((name, labels))

    assert value("camtrack_viewers", camera="front", transport="websocket") == 1
    assert value("camtrack_viewers", camera="front", transport="mjpeg") == 1
    assert value("camtrack_viewers", camera="back", transport="websocket") == 0
    assert value("camtrack_source_up", camera="front") == 1 and value("camtrack_source_up", camera="back") == 0
    assert value("camtrack_frames_captured", camera="front") >= 20
    assert value("camtrack_frames_encoded", camera="front", codec="h264") >= 20
    assert value("camtrack_frames_encoded", camera="front", codec="jpeg") >= 3
    assert value("camtrack_frames_sent", camera="front", transport="websocket") >= 20
    assert value("camtrack_sent_bytes", camera="front", transport="websocket") > 1000
    assert value("camtrack_keyframes", camera="front", codec="h264") >= 1
    assert value("camtrack_encode_seconds", camera="front", codec="h264") >= 20  # the histogram's count
    assert value("camtrack_negotiation_failures", camera="front", transport="websocket") == 0
    assert "camtrack_frames_sent_total{" in text and "camtrack_encode_seconds_bucket{" in text
    await viewer.close()


def test_config_file_and_command_line(tmp_path):
    path = tmp_path / "camtrack.toml"
    path.write_text("""
port = 9000
token = "from-file"
ice-server = ["stun:192.0.2.1:3478"]
codec = "vp8"
mjpeg-fps = 5

[cameras.porch]
source = "pattern"
width = 1280
height = 720
bitrate = 2000000

[cameras.lab]
source = "pattern"
codec = "h264"
max-viewers = 3
""")
    parser, args, cameras = parse(["--config", str(path), "--port", "9001", "--camera", "extra=pattern"])
    config = config_from_args(args, cameras)
    assert config.port == 9001  # the command line wins
    assert config.token == "from-file" and config.ice_servers == ["stun:192.0.2.1:3478"]
    # a list from the command line replaces the file's
    _, args, _ = parse(["--config", str(path), "--ice-server", "stun:192.0.2.9:3478"])
    assert args.ice_server == ["stun:192.0.2.9:3478"]
    assert config.mjpeg_fps == 5
    porch, lab, extra = config.cameras
    assert (porch.name, porch.width, porch.height, porch.codec, porch.bitrate) == ("porch", 1280, 720, "vp8", 2000000)
    assert (lab.codec, lab.max_viewers, lab.width) == ("h264", 3, 640)
    assert (extra.name, extra.source, extra.codec) == ("extra", "pattern", "vp8")


@pytest.mark.parametrize("argv, error", [
    (["--fps", "0"], "fps must be between 0 and 120"),
    (["--width", "641"], "even and positive"),
    (["--bitrate", "10"], "bitrate must be between"),
    (["--keyframe-interval", "0"], "keyframe interval must be positive"),
    (["--publish", "janus:http://192.0.2.1:8088/janus"], "needs a room"),
    (["--publish", "janus:http://192.0.2.1:8088/janus", "--janus-room", "1", "--encoder", "per-viewer"],
     "--encoder shared"),
    (["--camera", "bad name=pattern"], "camera name"),
])
def test_bad_settings_are_command_line_errors(capsys, argv, error):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert error in capsys.readouterr().err


@pytest.mark.parametrize("text, error", [
    ("colour = 'red'\n", "unknown option 'colour'"),
    ("[cameras.x]\nwidth = 2\n", "needs a source"),
    ("[cameras.x]\nsource = 'pattern'\nzoom = 2\n", "unknown key 'zoom'"),
    ("[cameras.x]\nsource = 'pattern'\nmax-viewers = -1\n", "max viewers"),
    ("port = \n", "config file"),
])
def test_bad_config_files(tmp_path, capsys, text, error):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(path)])
    assert exit_.value.code == 2
    assert error in capsys.readouterr().err
