"""The one declaration of the options (camtrack.config) and what is derived from it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from camtrack.cli import CAMERA_OPTIONS, OPTIONS, build_parser, config_from_args, options_table, parse
from camtrack.config import CameraConfig, CameraSettings, Config, settings, typed

ROOT = Path(__file__).resolve().parent.parent
#: the flags that are the command line's own, not settings
COMMAND_LINE_ONLY = {"--help", "--config", "--camera"}


def test_the_parser_has_a_flag_for_every_option_and_no_other():
    flags = {flag for action in build_parser()._actions for flag in action.option_strings if flag.startswith("--")}
    assert flags == {setting.flag for setting in OPTIONS} | COMMAND_LINE_ONLY


def test_every_option_has_a_checked_type_and_a_valid_default():
    for setting in settings(Config):
        # a type typed() does not know is a declaration mistake: TypeError, not ValueError
        assert typed(setting.label, setting.default, setting.kind) == setting.default, setting.name
    Config()  # every default passes every check


def test_the_per_camera_options_are_a_camera_tables_keys():
    # (keyed by the flag's name: a table's `mask` is the field `masks`)
    assert {s.name for s in CAMERA_OPTIONS.values()} == {f.name for f in dataclasses.fields(CameraSettings)}
    # (and process_function: a Python callable, for embedding programs, no option)
    assert {f.name for f in dataclasses.fields(CameraConfig)} == {"name", "source", "process_function",
                                                                  *(s.name for s in CAMERA_OPTIONS.values())}


def test_the_command_line_defaults_are_the_declared_ones(monkeypatch):
    monkeypatch.delenv("CAMTRACK_TOKEN", raising=False)
    _, args, cameras = parse([])
    assert config_from_args(args, cameras) == Config()


def test_a_config_file_of_every_option_gives_what_the_command_line_gives(tmp_path, monkeypatch):
    """One value per option (not its default), once as a TOML key and once as a flag."""
    monkeypatch.delenv("CAMTRACK_TOKEN", raising=False)
    values = {"host": "127.0.0.1", "port": 9000, "source": "/dev/video1", "input_format": "mjpeg", "encoder": "shared",
              "ice_servers": ["stun:x", "turn:t"],
              "ice_addresses": ["lo"], "negotiation_timeout": 5.5, "idle_timeout": 6.0, "header_timeout": 7.0,
              "max_connections": 100, "max_pending": 8, "max_loop_lag": 0.1, "send_budget": 0.01, "token": "t0k",
              "max_picture_age": 0.2, "max_cpu": 0.5,
              "allow_origins": ["https://a"],
              "allow_hosts": ["cams"], "cert": "c.pem", "key": "k.pem", "mjpeg_fps": 5.0, "jpeg_quality": 70,
              "linger": 0.0, "log_level": "warning", "width": 320, "height": 240, "fps": 12.5, "codec": "vp8",
              "bitrate": 300_000, "keyframe_interval": 1.0, "max_viewers": 3, "publish": "janus:http://j/janus",
              "janus_room": 7, "janus_pin": "p", "janus_display": "d",
              # (passthrough needs codec h264, and this file asks for vp8)
              "mode": "transcode", "rtsp_transport": "udp", "video_encoder": "libx264",
              "webrtc_port": 9555, "public_addresses": ["203.0.113.7", "cams.example"], "turn_secret": "s3c",
              "workers": 3,
              "unresponsive_timeout": 9.0, "process": "mine.py:process", "process_timeout": 3.0, "process_fps": 4.0,
              "trusted_proxies": ["10.0.0.0/8", "127.0.0.1/32"], "base_path": "/camera/",
              "rtsp_port": 9554, "rtsp_path": "/live/",
              "process_events": "always", "motion_event_threshold": 0.1, "motion_event_duration": 1.5,
              "motion_event_gap": 4.0, "webhook": "http://127.0.0.1:9/hook", "mqtt": "mqtt://127.0.0.1:1883/home",
              "masks": ["0,0 10,0 10%,10%"], "overlay": "%H:%M {camera}", "overlay_position": "bottom-right",
              "motion": True, "low_scale": 0.25, "low_bitrate": 90_000, "low_fps": 15.0, "low_source": "rtsp://cam/sub",
              "record": "/srv/clips", "pre_roll": 3.0, "post_roll": 2.5, "record_max_age": 7.0,
              "record_max_size": 500.0, "record_min_free": 100.0, "record_segments": 600.0, "audio": "off",
              "talk": "source", "talk_token": "t4lk"}
    assert set(values) == {setting.name for setting in OPTIONS}
    toml, argv = [], []
    for setting in OPTIONS:
        value = values[setting.name]
        key = setting.flag.removeprefix("--")
        if value is True:  # (a flag without a value)
            toml.append(f"{key} = true")
            argv.append(setting.flag)
            continue
        toml.append(f"{key} = {value!r}".replace("'", '"'))
        for item in value if isinstance(value, list) else [value]:
            argv += [setting.flag, str(item)]
    path = tmp_path / "camtrack.toml"
    path.write_text("\n".join(toml) + "\n")
    from_file = config_from_args(*parse(["--config", str(path)])[1:])
    from_flags = config_from_args(*parse(argv)[1:])
    assert from_file == from_flags
    assert {name: getattr(from_file, name) for name in values} == values


def test_a_camera_gets_the_servers_defaults_but_not_its_viewer_limit():
    config = Config(width=320, height=240, codec="vp8", max_viewers=5, publish="janus:http://j/janus", janus_room=2)
    camera = config.camera("x", "pattern", fps=10)
    assert (camera.width, camera.height, camera.codec, camera.fps, camera.janus_room) == (320, 240, "vp8", 10, 2)
    assert camera.max_viewers == 0  # --max-viewers counts all cameras together


def test_the_options_page_is_made_from_the_declarations():
    """docs/options.md's table is options_table(), made from the declarations: after changing an
    option, python -c "import camtrack.cli as c; c.write_options_page()" rewrites it."""
    page = (ROOT / "docs" / "options.md").read_text()
    assert options_table() in page, "docs/options.md is out of date: python -c 'import camtrack.cli as c; c.write_options_page()'"
    listed = set(re.findall(r"^\| `(--[a-z-]+)", page, re.M))
    assert listed == {setting.flag for setting in OPTIONS} | COMMAND_LINE_ONLY - {"--help"}


@pytest.mark.parametrize("setting", [s for s in OPTIONS if s.kind in (int, float)], ids=lambda s: s.name)
def test_a_wrong_type_in_a_settings_object_is_a_value_error(setting):
    with pytest.raises(ValueError, match=f"^{setting.label} must be a"):
        Config(**{setting.name: "1"})
