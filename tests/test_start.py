"""A clean start and clear errors: `python server.py` as a person runs it.

Everything is bound before "watch at" is logged, every address a viewer can use is listed, and each
source that cannot be opened is one line with its reason, within the time docs/options.md states;
the page offers a field for a missing or wrong token, and has an icon.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from . import netns as netns_mod
from .silent_server import SilentServer
from .test_browser import sandbox  # noqa: F401 - the fixture: Chromium in a namespace

ROOT = Path(__file__).resolve().parent.parent
#: docs/options.md: "a stream or camera that does not answer is an error after 5 s"
OPEN_TIMEOUT = 5.0
#: on top of it: the interpreter's start and imports (1 to 3 s here; more on a busy 2-core CI machine)
START_MARGIN = 8.0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "CAMTRACK_TOKEN"}


def run_server(*argv: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    """`python server.py ARGV` to its end (it must end by itself: an error), and how long it took."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "server.py"), "--webrtc-port", str(free_port(socket.SOCK_DGRAM)),
                           *argv], cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - started


def wait_line(process: subprocess.Popen[str], text: str, timeout: float = 60) -> str:
    """The first line of `process`'s stderr that contains `text` (read by a thread: never stuck)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no line with {text!r} within {timeout} s") from None
        if line is None:
            raise AssertionError(f"the server ended without a line with {text!r}")
        if text in line:
            return line.rstrip("\n")


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    """Every line on stderr that is not one of camtrack's log lines (INFO, WARNING ...)."""
    return [line for line in done.stderr.splitlines() if not line[:4].isdigit()]


# -- the ports: bound before "watch at"


def test_a_taken_http_port_is_said_before_any_watch_at():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done, _ = run_server("--host", "127.0.0.1", "--port", str(port), "--source", "pattern")
    assert done.returncode == 1, done.stderr
    assert error_lines(done) == [f"camtrack: error: cannot listen on 127.0.0.1:{port}: error while attempting to "
                                 f"bind on address ('127.0.0.1', {port}): address already in use"], done.stderr
    assert "watch at" not in done.stderr


def test_a_taken_webrtc_port_is_said_before_any_watch_at():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("0.0.0.0", 0))
        udp = busy.getsockname()[1]
        done, _ = run_server("--host", "127.0.0.1", "--port", str(free_port()), "--source", "pattern",
                             "--webrtc-port", str(udp))
    assert done.returncode == 1, done.stderr
    assert error_lines(done) == [f"camtrack: error: cannot bind the WebRTC UDP port {udp} (--webrtc-port): "
                                 "Address already in use"], done.stderr
    assert "watch at" not in done.stderr


def test_watch_at_is_logged_once_the_port_answers():
    """The moment "watch at" is logged, the address already takes connections (no retry needed)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--host", "127.0.0.1", "--port", str(port),
                               "--source", "pattern", "--webrtc-port", str(free_port(socket.SOCK_DGRAM))],
                              cwd=ROOT, env=environment(), stderr=subprocess.PIPE, text=True)
    try:
        line = wait_line(server, "watch at")
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass  # connected at the first try
        assert line.rstrip().endswith(f"watch at http://127.0.0.1:{port}/"), line
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=15)


def watch_line(ns: netns_mod.Netns, port: int) -> str:
    """The "watch at" line of a server listening on every interface of namespace `ns`."""
    server = subprocess.Popen(ns.command(sys.executable, str(ROOT / "server.py"), "--port", str(port),
                                         "--source", "pattern", "--webrtc-port", "0"),
                              cwd=ROOT, env=environment(), stderr=subprocess.PIPE, text=True)
    try:
        return wait_line(server, "watch at").split("watch at ", 1)[1]
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=15)


@pytest.mark.slow
def test_every_address_a_viewer_can_use_is_listed():
    """A namespace with two LAN-like interfaces and a Docker bridge: every address listed, each named,
    the bridge last (before: only the first address, which could be the bridge's)."""
    try:
        ns = netns_mod.create(f"camtrack-start-{os.getpid()}")
    except netns_mod.NetnsUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    try:
        for step in (["link", "add", "docker0", "type", "veth", "peer", "name", "dockpeer"],
                     ["addr", "add", "172.17.0.1/16", "dev", "docker0"], ["link", "set", "docker0", "up"],
                     ["link", "set", "dockpeer", "up"]):
            subprocess.run(["ip", "-n", ns.name, *step], check=True, capture_output=True)
        urls = watch_line(ns, 8080).split(", ")
        assert set(urls[:2]) == {f"http://{netns_mod.SERVER_ADDRESS}:8080/ (ct0)",
                                 f"http://{netns_mod.BROWSER_ADDRESS}:8080/ (ct1)"}, urls
        assert urls[2:] == ["http://172.17.0.1:8080/ (docker0)"], urls
    finally:
        ns.delete()


def test_watch_urls_of_one_address_and_of_a_host():
    from camtrack.cli import watch_urls

    assert watch_urls("127.0.0.1", 8080) == ["http://127.0.0.1:8080/"]
    assert watch_urls("::1", 8443, tls=True) == ["https://[::1]:8443/"]
    assert watch_urls("camera.example", 80) == ["http://camera.example:80/"]
    assert watch_urls("127.0.0.1", 8080, base_path="/camera/") == ["http://127.0.0.1:8080/camera/"]


# -- sources: one line each, with its reason, in bounded time


def test_a_missing_file_is_one_line_and_nothing_about_transcoding(tmp_path):
    missing = tmp_path / "nope.mp4"
    done, _ = run_server("--source", str(missing), "--port", str(free_port()))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"camtrack: error: no such video file: {missing}"], done.stderr
    done, _ = run_server("--source", str(tmp_path), "--port", str(free_port()))
    assert done.stderr.splitlines() == [f"camtrack: error: not a video file: {tmp_path} is a directory"], done.stderr


def test_a_missing_camera_says_why():
    done, _ = run_server("--source", "/dev/video57", "--port", str(free_port()))
    assert done.returncode == 2
    assert error_lines(done) == ["camtrack: error: cannot open camera 57: no such device (/dev/video57 does not "
                                 "exist)"], done.stderr
    done, _ = run_server("--source", "/dev/video57", "--input-format", "h264", "--port", str(free_port()))
    assert done.returncode == 2
    assert error_lines(done) == ["camtrack: error: cannot open /dev/video57: no such device (/dev/video57 does not "
                                 "exist)"], done.stderr


def test_a_camera_this_user_may_not_open_says_permission_denied(tmp_path):
    """device_problem's reasons; root without the capability to override file permissions stands in
    for a user outside the camera's group."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop a capability")
    node = tmp_path / "video9"
    node.write_bytes(b"")
    node.chmod(0)
    code = f"from camtrack.sources.opencv import device_problem; print(device_problem({str(node)!r}))"
    done = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", code],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == f"permission denied on {node} (is this user in its group, often 'video'?)", done
    from camtrack.sources.opencv import device_problem

    assert device_problem("/dev/null") == "/dev/null is not a V4L2 video device"
    assert device_problem(str(tmp_path / "video8")) == f"no such device ({tmp_path / 'video8'} does not exist)"


@pytest.mark.slow
@pytest.mark.parametrize("scheme,mode", [("http", "auto"), ("http", "transcode"), ("http", "passthrough"),
                                         ("rtsp", "auto")])
def test_a_camera_that_never_answers_is_one_line_within_the_time_out(scheme, mode):
    """An HTTP camera that never answered stalled start-up 36 s with FFmpeg's own output."""
    camera = SilentServer()
    url = f"{scheme}://127.0.0.1:{camera.port}/video.mjpg"
    try:
        done, took = run_server("--source", url, "--mode", mode, "--port", str(free_port()))
        ended = time.monotonic()
    finally:
        camera.close()
    assert camera.first is not None, "camtrack never tried the camera"
    assert done.returncode == 2
    # one line, camtrack's own (no FFmpeg or OpenCV chatter), with the reason
    timed_out = {
        "auto": f"cannot open {url}: no stream within the open or read timeout (5 s, 5 s)",
        "transcode": f"cannot open stream {url}: no answer within 5 s",
        "passthrough": f"cannot open {url} for passthrough: no stream within the open or read timeout (5 s, 5 s)",
    }[mode] if scheme == "http" else f"cannot open {url}: the camera gave no stream within the open timeout (5 s)"
    # (or FFmpeg's own socket time-out, when it comes first)
    for_passthrough = " for passthrough" if mode == "passthrough" else ""
    assert done.stderr.splitlines() in ([f"camtrack: error: {timed_out}"],
                                        [f"camtrack: error: cannot open {url}{for_passthrough}: Connection timed "
                                         "out"]), done.stderr
    # from camtrack's first connection to its exit: the documented 5 s; from the command: its start too
    assert ended - camera.first < OPEN_TIMEOUT + 2.0, f"{ended - camera.first:.1f} s"
    assert took < OPEN_TIMEOUT + START_MARGIN, f"{took:.1f} s"


def test_each_failing_camera_is_its_own_line(tmp_path):
    config = tmp_path / "camtrack.toml"
    config.write_text(f"[cameras.a]\nsource = '{tmp_path / 'a.mp4'}'\n[cameras.b]\nsource = 'pattern'\n"
                      f"[cameras.c]\nsource = '/dev/video58'\n")
    done, _ = run_server("--config", str(config), "--port", str(free_port()))
    assert done.returncode == 2
    assert error_lines(done) == [f"camtrack: error: camera a: no such video file: {tmp_path / 'a.mp4'}",
                                 "camtrack: error: camera c: cannot open camera 58: no such device (/dev/video58 "
                                 "does not exist)"], done.stderr


def test_a_missing_certificate_or_key_is_named(tmp_path):
    done, _ = run_server("--cert", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "key.pem"), "--source", "pattern")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"camtrack: error: cannot load TLS certificate/key: --cert "
                                        f"{tmp_path / 'cert.pem'}: No such file or directory"], done.stderr
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    done, _ = run_server("--cert", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "key.pem"), "--source", "pattern")
    assert done.stderr.splitlines() == [f"camtrack: error: cannot load TLS certificate/key: --key "
                                        f"{tmp_path / 'key.pem'}: No such file or directory"], done.stderr


# -- the page: an icon, and a field for the token


async def test_the_favicon_is_served():
    import xml.etree.ElementTree as ElementTree

    from aiohttp.test_utils import TestClient, TestServer

    from camtrack import Config, create_app

    async with TestClient(TestServer(create_app(Config(source="pattern", webrtc_port=0, token="s3cret")))) as client:
        page = await (await client.get("/")).text()
        assert '<link rel="icon" href="static/favicon.svg" type="image/svg+xml">' in page
        for path in ("/favicon.ico", "/static/favicon.svg"):
            response = await client.get(path)  # no token needed: it is the page's, like the page
            assert response.status == 200 and response.content_type == "image/svg+xml"
            assert ElementTree.fromstring(await response.read()).tag == "{http://www.w3.org/2000/svg}svg"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_page_asks_for_a_missing_or_wrong_token(sandbox, tmp_path):  # noqa: F811 - the fixture imported above
    """Chromium (tests/test_browser.py's namespace): no token, a field; a wrong one, told so and the
    field again; the right one, the picture. No request of the page's gets 404 (the icon)."""
    from .test_browser import URL, browser_and_server, wait_frames

    with browser_and_server(sandbox, tmp_path, "h264", "--token", "s3cret") as (browser, _, log):
        page = browser.new_page(viewport={"width": 800, "height": 600})
        answers: list[tuple[int, str]] = []
        page.on("response", lambda response: answers.append((response.status, response.url)))
        deadline = time.monotonic() + 30
        while True:
            try:
                page.goto(URL, timeout=5000)
                break
            except Exception:  # noqa: BLE001 - connection refused until the server listens
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.2)
        page.wait_for_function("window.camtrack.state === 'unauthorized'", timeout=30000)
        form = page.locator("#token-form")
        assert form.is_visible()
        assert "needs a token" in page.locator("#status").inner_text()
        page.screenshot(path=str(tmp_path / "token.png"))

        page.fill("#token", "not-it")
        page.press("#token", "Enter")
        page.wait_for_function("document.getElementById('token-why').textContent.includes('wrong token')",
                               timeout=30000)
        assert form.is_visible() and page.evaluate("window.camtrack.state") == "unauthorized"

        page.fill("#token", "s3cret")
        page.click("#token-form button")
        page.wait_for_function("window.camtrack.state === 'live'", timeout=30000)
        assert not form.is_visible()
        wait_frames(page, 10)
        assert page.evaluate("window.camtrack.token()") == "s3cret"
        assert "s3cret" not in log.read_text()

        page.wait_for_load_state("networkidle")
        assert not [url for status, url in answers if status >= 400], answers
        assert any(status == 200 and url.endswith("/static/favicon.svg") for status, url in answers), answers
