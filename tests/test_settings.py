"""Every bad setting, on the command line or in the config file: one line, exit status 2, nothing started."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import camtrack.cli
from camtrack.cli import main

ROOT = Path(__file__).resolve().parent.parent
#: every row runs with these first; a row's own options come after and win
BASE = ["--source", "pattern", "--host", "127.0.0.1"]
NOT_HERE = "198.51.100.77"  # TEST-NET-2: on no interface of this machine
PUBLISH = ["--publish", "janus:http://192.0.2.1:8088/janus"]


class Started(Exception):
    """Raised instead of serving: the settings were accepted."""


@pytest.fixture
def no_server(monkeypatch):
    """main() must never get as far as serving; reaching the runner raises Started."""
    monkeypatch.delenv("CAMTRACK_TOKEN", raising=False)

    def refuse(*args, **kwargs):
        raise Started()

    monkeypatch.setattr(camtrack.cli, "make_runner", refuse)
    monkeypatch.setattr(camtrack.cli.web, "run_app", refuse)


def run_main(argv: list[str], capsys) -> tuple[int | str | None, str]:
    """main(argv)'s exit status and stderr; fails if the server would have started."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code, capsys.readouterr().err


# (command line after BASE, config file text or None, what the one line must say)
BAD = [
    # ports
    (["--port", "70000"], None, "port must be between 1 and 65535, not 70000"),
    # a local microphone or speaker: alsa:DEVICE (camtrack.sources.alsa)
    (["--audio", "loud"], None, "audio must be one of auto, off or alsa:DEVICE, not 'loud'"),
    (["--audio", "alsa:"], None, "is not an ALSA device name"),
    (["--audio", "alsa:my mic"], None, "is not an ALSA device name"),
    (["--talk", "alsa:"], None, "is not an ALSA device name"),
    (["--port", "0"], None, "port must be between 1 and 65535, not 0"),
    (["--port", "-1"], None, "port must be between 1 and 65535"),
    (["--port", "http"], None, "argument --port: invalid int value"),
    (["--port", "99999999999999999999999"], None, "port must be between 1 and 65535"),
    # frame size, rate, bitrate, keyframes
    (["--width", "100000"], None, "at most 7680x4320, not 100000x480"),
    (["--height", "4322"], None, "at most 7680x4320"),
    (["--width", "641"], None, "even and positive"),
    (["--width", "0"], None, "even and positive"),
    (["--width", "640.0"], None, "argument --width: invalid int value"),
    (["--fps", "nan"], None, "fps must be a finite number, not nan"),
    (["--fps", "inf"], None, "fps must be a finite number, not inf"),
    (["--fps", "0"], None, "fps must be between 0 and 120"),
    (["--fps", "0.00001"], None, "fps must be between 0 and 120"),
    (["--fps", "1000"], None, "fps must be between 0 and 120"),
    (["--bitrate", "10"], None, "bitrate must be between 50000 and 50000000"),
    (["--bitrate", "1e9"], None, "argument --bitrate: invalid int value"),
    (["--keyframe-interval", "nan"], None, "keyframe interval must be a finite number"),
    (["--keyframe-interval", "-1"], None, "keyframe interval must be positive"),
    (["--keyframe-interval", "1e9"], None, "keyframe interval must be positive and at most 600 s"),
    # time-outs and linger
    (["--negotiation-timeout", "nan"], None, "negotiation timeout must be a finite number"),
    (["--negotiation-timeout", "0"], None, "negotiation timeout must be positive"),
    (["--idle-timeout", "inf"], None, "idle timeout must be a finite number"),
    (["--idle-timeout", "-5"], None, "idle timeout must be positive"),
    (["--linger", "nan"], None, "linger must be a finite number, not nan"),
    (["--linger", "-1"], None, "linger must be 0 or more"),
    (["--linger", "1e6"], None, "linger must be 0 or more and at most 3600 s"),
    # MJPEG, viewers, Janus
    (["--mjpeg-fps", "0"], None, "MJPEG fps must be between 0.1 and 120"),
    (["--mjpeg-fps", "nan"], None, "MJPEG fps must be a finite number"),
    (["--jpeg-quality", "0"], None, "JPEG quality must be between 1 and 100"),
    (["--jpeg-quality", "101"], None, "JPEG quality must be between 1 and 100"),
    (["--max-viewers", "-1"], None, "max viewers must be 0 (no limit) or more"),
    (["--max-viewers", "10000000"], None, "at most 10000"),
    ([*PUBLISH, "--janus-room", "0"], None, "janus room must be between 1 and"),
    ([*PUBLISH, "--janus-room", str(2**63)], None, "janus room must be between 1 and"),
    (PUBLISH, None, "needs a room"),
    (["--publish", "http://192.0.2.1:8088/janus", "--janus-room", "1"], None, "publish must look like janus:"),
    # choices
    (["--codec", "av1"], None, "argument --codec: invalid choice: 'av1'"),
    # a V4L2 camera's own encoding (there is no camera here: what matters is the one line)
    (["--input-format", "yuyv"], None, "argument --input-format: invalid choice: 'yuyv'"),
    (["--input-format", "h264"], None, "input-format h264 is for a camera device (/dev/videoN), not 'pattern'"),
    ([], "[cameras.x]\nsource = 'rtsp://cam/live'\ninput_format = 'mjpeg'\n",
     "input-format mjpeg is for a camera device (/dev/videoN), not 'rtsp://cam/live'"),
    (["--source", "/dev/video63", "--input-format", "mjpeg"], None, "cannot open /dev/video63: No such file or directory"),
    (["--source", "63", "--input-format", "h264", "--mode", "passthrough"], None, "cannot open 63 for passthrough"),
    (["--source", "63", "--mode", "passthrough"], None, "passed through only when asked for H.264 (--input-format h264)"),
    (["--encoder", "gpu"], None, "argument --encoder: invalid choice"),
    (["--log-level", "loud"], None, "argument --log-level: invalid choice"),
    (["--bogus"], None, "unrecognized arguments: --bogus"),
    # ICE
    (["--ice-server", "stun.example.org"], None, "ICE server must look like stun:"),
    (["--ice-server", "turn:192.0.2.1:3478"], None, "TURN server needs a user and password"),
    (["--ice-server", "stun:host:abc"], None, "not a STUN/TURN address aiortc can use"),
    (["--ice-server", "stun:[::1]:3478"], None, "not a STUN/TURN address aiortc can use"),
    (["--ice-server", "stun:192.0.2.1:99999"], None, "port must be between 1 and 65535, not 99999"),
    (["--ice-address", NOT_HERE], None, f"--ice-address '{NOT_HERE}' is not an address of this machine"),
    (["--ice-address", "127.0.0.1", "--ice-address", NOT_HERE], None, "is not an address of this machine"),
    (["--ice-address", "nosuchif0"], None, "neither an IP address nor a network interface"),
    # the shared WebRTC port, public addresses, TURN secrets
    (["--webrtc-port", "70000"], None, "WebRTC port must be between 0 (a random port per peer) and 65535, not 70000"),
    (["--webrtc-port", "-1"], None, "WebRTC port must be between 0"),
    (["--webrtc-port", "udp"], None, "argument --webrtc-port: invalid int value"),
    (["--rtsp-port", "70000"], None, "RTSP port must be between 0 (no RTSP) and 65535, not 70000"),
    (["--rtsp-port", "8080"], None, "--rtsp-port 8080 is the web port (--port)"),
    (["--rtsp-path", "live"], None, "RTSP path must be / or like /live/"),
    ([], "rtsp-path = '/a b/'\n", "RTSP path must be / or like /live/"),
    ([], "webrtc-port = '8555'\n", "webrtc-port must be a whole number, not '8555'"),
    (["--public-address", "not an address"], None, "public address must be an IP address or a host name, not 'not an"),
    (["--public-address=cams-.example"], None, "public address must be an IP address or a host name"),
    (["--public-address", "1.2.3.4:8555"], None, "public address must be an IP address or a host name"),
    (["--public-address", "203.0.113.7", "--webrtc-port", "0"], None, "--public-address needs a fixed --webrtc-port"),
    ([], "public-address = '203.0.113.7'\n", "must be a list of strings"),
    (["--trusted-proxy", "proxy.example"], None, "trusted proxies: 'proxy.example' is not an IP address or network"),
    (["--trusted-proxy", "10.0.0.0/33"], None, "is not an IP address or network"),
    (["--base-path", "/camera/../etc/"], None, "base path must be a path like /camera/"),
    (["--base-path", "/cam era/"], None, "base path must be a path like /camera/"),
    ([], "base-path = 1\n", "base-path must be a string, not 1"),
    # worker processes
    (["--workers", "-1"], None, "workers must be 0 (as needed, up to one per core) or more, at most 64, not -1"),
    (["--workers", "65"], None, "workers must be 0 (as needed, up to one per core) or more, at most 64, not 65"),
    (["--workers", "2", "--encoder", "per-viewer"], None, "--workers needs --encoder shared"),
    ([], "workers = 2.0\n", "workers must be a whole number, not 2.0"),
    (["--turn-secret", "s3c"], None, "--turn-secret needs a TURN server: --ice-server turn:HOST:PORT"),
    (["--turn-secret", "s3c", "--ice-server", "turn:u:p@192.0.2.1:3478"], None,
     "with --turn-secret, give the TURN server without USER:PASS"),
    (["--turn-secret", "", "--ice-server", "turn:192.0.2.1:3478"], None, "TURN secret must be a non-empty string"),
    # cameras
    (["--camera", "a=pattern", "--camera", "a=pattern"], None, "--camera 'a' is given twice"),
    (["--camera", "a=pattern", "--camera", "b=pattern", "--camera", "a=other"], None, "'a' is given twice"),
    (["--camera", "bad name=pattern"], None, "camera name 'bad name'"),
    (["--camera", "pattern"], None, "--camera takes NAME=SOURCE"),
    (["--camera", "a="], None, "--camera takes NAME=SOURCE"),
    # token, TLS, host
    (["--token", ""], None, "token must be a non-empty string"),
    (["--token", "two words"], None, "without spaces or control characters"),
    (["--token", "line\nbreak"], None, "without spaces or control characters"),
    (["--cert", "/nonexistent.pem"], None, "TLS needs both --cert and --key"),
    (["--cert", "/nonexistent.pem", "--key", "/nonexistent.key"], None, "cannot load TLS certificate/key"),
    (["--cert", "bad\0path", "--key", "k"], None, "cannot load TLS certificate/key"),
    (["--host", "no-such-host.invalid"], None, "--host 'no-such-host.invalid' is not an IP address or a name"),
    (["--host", ".."], None, "--host '..' is not an IP address or a name"),
    (["--host", "a" * 5000], None, "is not an IP address or a name"),
    (["--host", "nul\0"], None, "is not an IP address or a name"),
    # a source OpenCV cannot even try (an index too large for an int)
    (["--source", "9" * 30], None, f"cannot open source '{'9' * 30}'"),
    # the config file itself
    (["--config", "/dev/zero"], None, "config file /dev/zero is not a regular file"),
    (["--config", "/nonexistent/camtrack.toml"], None, "cannot read config file /nonexistent/camtrack.toml"),
    (["--config", "nul\0byte"], None, "cannot read config file"),
    (["--config", "DIR"], None, "is not a regular file"),
    (["--config", "FIFO"], None, "is not a regular file"),
    ([], "port = \n", "config file"),
    ([], "port = 1\nport = 2\n", "config file"),
    ([], "BINARY", "is not UTF-8 text"),
    ([], "HUGE", "is larger than 1024 KiB"),
    ([], "a = " + "[" * 50_000, "nested too deeply"),
    ([], "colour = 'red'\n", "unknown option 'colour'"),
    ([], "config = 'other.toml'\n", "unknown option 'config'"),
    # wrong TOML types and values of top-level options
    ([], "port = 70000\n", "port must be between 1 and 65535"),
    ([], "port = 99999999999999999999\n", "port must be between 1 and 65535"),
    ([], "port = '8080'\n", "port must be a whole number, not '8080'"),
    ([], "width = 640.0\n", "width must be a whole number, not 640.0"),
    ([], "width = true\n", "width must be a whole number, not True"),
    ([], "height = 100000\n", "at most 7680x4320"),
    ([], "codec = 5\n", "codec must be a string, not 5"),
    ([], "codec = 'av1'\n", "codec must be one of h264, vp8"),
    ([], "encoder = 'gpu'\n", "encoder must be one of shared, per-viewer"),
    ([], "log-level = 'loud'\n", "log-level must be one of"),
    ([], "token = 123456\n", "token must be a string, not 123456"),
    ([], "token = ''\n", "token must be a non-empty string"),
    ([], "host = 5\n", "host must be a string"),
    ([], "ice-server = 'stun:192.0.2.1:3478'\n", "ice-server must be a list of strings"),
    ([], "ice-server = [1, 2]\n", "ice-server must be a list of strings"),
    ([], f"ice-address = ['{NOT_HERE}']\n", "is not an address of this machine"),
    ([], "allow-origin = [true]\n", "allow-origin must be a list of strings"),
    ([], "fps = nan\n", "fps must be a finite number, not nan"),
    ([], "fps = inf\n", "fps must be a finite number, not inf"),
    ([], "fps = true\n", "fps must be a finite number, not True"),
    ([], "linger = nan\n", "linger must be a finite number"),
    ([], "keyframe-interval = -inf\n", "keyframe-interval must be a finite number"),
    ([], "idle-timeout = '30'\n", "idle-timeout must be a finite number"),
    ([], "negotiation-timeout = 0\n", "negotiation timeout must be positive"),
    ([], "mjpeg-fps = 1e9\n", "MJPEG fps must be between 0.1 and 120"),
    ([], "jpeg-quality = 50.5\n", "jpeg-quality must be a whole number"),
    ([], "max-viewers = true\n", "max-viewers must be a whole number"),
    ([], "janus-room = '1'\n", "janus-room must be a whole number"),
    ([], "publish = ['janus:http://192.0.2.1:8088/janus']\n", "publish must be a string"),
    # [cameras.NAME] tables
    ([], "cameras = 5\n", "cameras must be [cameras.NAME] tables"),
    ([], "[cameras]\nx = 'pattern'\n", "cameras must be [cameras.NAME] tables"),
    ([], "[cameras.x]\nwidth = 2\n", "camera 'x' needs a source"),
    ([], "[cameras.x]\nsource = 'pattern'\nzoom = 2\n", "camera 'x' unknown key 'zoom'"),
    ([], "[cameras.x]\nsource = 5\n", "camera 'x': source must be a string"),
    ([], "[cameras.x]\nsource = ''\n", "source must not be empty"),
    ([], "[cameras.x]\nsource = 'pattern'\nwidth = 640.5\n", "camera 'x': width must be a whole number"),
    ([], "[cameras.x]\nsource = 'pattern'\nwidth = 9000\n", "at most 7680x4320"),
    ([], "[cameras.x]\nsource = 'pattern'\ncodec = 5\n", "camera 'x': codec must be a string"),
    ([], "[cameras.x]\nsource = 'pattern'\nfps = nan\n", "camera 'x': fps must be a finite number"),
    ([], "[cameras.x]\nsource = 'pattern'\nbitrate = 1e12\n", "camera 'x': bitrate must be a whole number"),
    ([], "[cameras.x]\nsource = 'pattern'\nkeyframe-interval = false\n", "keyframe-interval must be a finite number"),
    ([], "[cameras.x]\nsource = 'pattern'\nmax-viewers = -1\n", "max viewers must be 0 (no limit) or more"),
    ([], "[cameras.x]\nsource = 'pattern'\njanus-room = 1.5\n", "janus-room must be a whole number"),
    ([], "[cameras.'bad name']\nsource = 'pattern'\n", "camera name 'bad name'"),
    (["--camera", "x=pattern", "--camera", "x=pattern"], "[cameras.x]\nsource = 'pattern'\n", "'x' is given twice"),
]


def prepare(argv: list[str], toml: str | None, tmp_path: Path) -> list[str]:
    """The full command line of a row: placeholders made real, the config file written."""
    fifo = tmp_path / "fifo"
    replace = {"DIR": str(tmp_path), "FIFO": str(fifo)}
    if "FIFO" in argv:
        os.mkfifo(fifo)
    argv = [replace.get(arg, arg) for arg in argv]
    if toml is not None:
        path = tmp_path / "camtrack.toml"
        if toml == "BINARY":
            path.write_bytes(b"port = 1\n\xff\xfe\x00garbage")
        elif toml == "HUGE":
            path.write_text("# padding\n" * 120_000)
        else:
            path.write_text(toml)
        argv = ["--config", str(path), *argv]
    return [*BASE, *argv]


@pytest.mark.parametrize("argv, toml, error", BAD, ids=[f"{i}:{' '.join(a)}{t or ''}"[:60] for i, (a, t, _) in
                                                       enumerate(BAD)])
def test_a_bad_setting_is_one_line_and_status_2(no_server, capsys, tmp_path, argv, toml, error):
    status, err = run_main(prepare(argv, toml, tmp_path), capsys)
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("camtrack: error: "), err
    assert error in lines[0], err


GOOD = [
    ([], None),
    (["--port", "1"], None),
    (["--port", "65535"], None),
    (["--width", "1920", "--height", "1080", "--fps", "0.5", "--keyframe-interval", "600"], None),
    (["--linger", "0", "--max-viewers", "0", "--jpeg-quality", "1", "--mjpeg-fps", "120"], None),
    (["--negotiation-timeout", "3600", "--idle-timeout", "0.5", "--bitrate", "50000"], None),
    (["--ice-address", "127.0.0.1"], None),
    (["--ice-address", "lo"], None),
    (["--ice-server", "stun:192.0.2.1:3478", "--ice-server", "turn:u:p@192.0.2.1:3478"], None),
    (["--token", "s3cret-token", "--allow-origin", "https://cams.example:8443"], None),
    (["--camera", "front=pattern", "--camera", "back=pattern"], None),
    ([*PUBLISH, "--janus-room", "1234"], None),
    (["--host", "localhost"], None),
    (["--webrtc-port", "0"], None),
    (["--webrtc-port", "9000", "--public-address", "203.0.113.7", "--public-address", "cams.example.org"], None),
    (["--turn-secret", "s3c", "--ice-server", "turn:192.0.2.1:3478", "--ice-server", "stun:192.0.2.1:3478"], None),
    ([], "webrtc-port = 8189\npublic-address = ['2001:db8::7']\n"),
    (["--trusted-proxy", "127.0.0.1", "--trusted-proxy", "10.0.0.0/8", "--base-path", "camera"], None),
    ([], "trusted-proxy = ['::1', '192.168.1.0/24']\nbase-path = '/camera/cams/'\n"),
    ([], "port = 9000\nfps = 15\nwidth = 320\nheight = 240\ncodec = 'VP8'\nlinger = 0\n"),
    ([], "token = 'abc'\nice-server = ['stun:192.0.2.1:3478']\nice-address = ['lo']\nlog-level = 'warning'\n"),
    ([], "mjpeg-fps = 5\njpeg-quality = 90\nmax-viewers = 4\nkeyframe-interval = 1\n"),
    ([], ("[cameras.porch]\nsource = 'pattern'\nwidth = 320\nheight = 240\nfps = 10.5\nbitrate = 200000\n"
          "[cameras.lab]\nsource = 'pattern'\ncodec = 'vp8'\nmax-viewers = 2\nkeyframe-interval = 0.5\n")),
    # the command line may give a file's camera another source (once)
    (["--camera", "porch=pattern"], "[cameras.porch]\nsource = 'nonexistent.mp4'\nwidth = 320\nheight = 240\n"),
]


@pytest.mark.parametrize("argv, toml", GOOD, ids=[f"{i}:{' '.join(a)}{t or ''}"[:60] for i, (a, t) in
                                                   enumerate(GOOD)])
def test_good_settings_are_accepted(no_server, capsys, tmp_path, argv, toml):
    with pytest.raises(Started):
        main(prepare(argv, toml, tmp_path))
    assert "error" not in capsys.readouterr().err


@pytest.mark.parametrize("argv, toml, error", [
    (["--config", "/dev/zero"], None, "is not a regular file"),
    (["--config", "FIFO"], None, "is not a regular file"),
    (["--port", "70000"], None, "port must be between 1 and 65535"),
    (["--linger", "nan"], None, "linger must be a finite number"),
    ([], "width = 640.0\n", "width must be a whole number"),
    ([], "token = 123456\n", "token must be a string"),
    ([], "codec = 5\n", "codec must be a string"),
])
def test_a_real_process_fails_in_one_line(tmp_path, argv, toml, error):
    """The nastiest ones through `python -m camtrack`: nothing starts, nothing hangs, no traceback."""
    env = {k: v for k, v in os.environ.items() if k != "CAMTRACK_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "camtrack", *prepare(argv, toml, tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1 and error in done.stderr, done.stderr


def test_a_taken_port_is_one_line_and_status_1():
    """Not a bad setting but a busy machine: status 1, as before."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "CAMTRACK_TOKEN"}
        done = subprocess.run([sys.executable, "-m", "camtrack", *BASE, "--port", str(port), "--webrtc-port", "0"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == [(f"camtrack: error: cannot listen on 127.0.0.1:{port}: error while attempting to bind on "
                       f"address ('127.0.0.1', {port}): address already in use")], done.stderr
    assert "Traceback" not in done.stderr


def test_cameras_are_checked_at_once_not_one_after_another(no_server, capsys, tmp_path, monkeypatch):
    """A camera that takes its time to answer (an unreachable RTSP camera: seconds) must not hold up
    the others: each camera's check waits here until the other's has begun too."""
    import threading

    both = threading.Barrier(2, timeout=20)

    def meet(*args, **kwargs):
        both.wait()  # with the checks one after another, this breaks after 20 s

    monkeypatch.setattr(camtrack.cli, "check_source", meet)
    toml = "[cameras.a]\nsource = 'pattern'\n[cameras.b]\nsource = 'pattern'\n"
    with pytest.raises(Started):
        main(prepare([], toml, tmp_path))
    assert not both.broken
