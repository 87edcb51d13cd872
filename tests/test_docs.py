"""The docs checked against the server: the keys, flags, endpoints and behaviours they name exist,
and their recipes run (issue 20: the docs had left keys out and contradicted the server)."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from camtrack import Config, create_app
from camtrack.cli import CAMERA_KEYS, OPTIONS

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WATCHING = ROOT / "docs" / "watching.md"
HEALTH = ROOT / "docs" / "health.md"
#: the endpoint tables (the README's short one and the full one)
ENDPOINT_TABLES = [ROOT / "README.md", WATCHING]
#: routes the tables leave out on purpose, and the page and words that say them instead
UNLISTED_ROUTES = {
    ("GET", "/static"): ("README.md", "`static/`"),
    ("GET", "/favicon.ico"): ("architecture.md", "`/favicon.ico`"),
    ("DELETE", "/cameras/{name}/whep/{id}"): ("watching.md", "`DELETE` that location"),
    ("PATCH", "/cameras/{name}/whep/{id}"): ("watching.md", "(`PATCH`) is answered"),
    ("POST", "/ws"): ("protocols.md", "`POST /ws`"),
}
#: what runs camtrack (or its benchmark, or a client script of the tests) in a line of a code block or
#: an inline code span
CAMTRACK_COMMANDS = ("server.py", "python -m camtrack", "camtrack --", "bench.run", "tests/")
FLAG = r"(?<![\w-])--[a-z][a-z0-9-]+"
#: other programs' flags the docs show alone in a span: docker run's (deployment.md)
OTHER_PROGRAMS_FLAGS = {"--network"}


def test_the_camera_table_keys_are_every_per_camera_option():
    """docs/watching.md's list of a [cameras.NAME] table's keys is what the config file accepts
    (input-format, mode and rtsp-transport were missing)."""
    text = " ".join(WATCHING.read_text().split())
    sentence = re.search(r"A camera table takes (.*?);", text)
    assert sentence, "docs/watching.md no longer says what a camera table takes"
    documented = re.findall(r"`([a-z-]+)`", sentence.group(1))
    assert sorted(documented) == sorted(CAMERA_KEYS)
    assert len(documented) == len(set(documented))


def documented_endpoints(page: Path) -> set[tuple[str, str]]:
    """(method, route) of every row of the page's endpoint table: `GET /ws`, `/ws?camera=NAME`, ..."""
    found = set()
    for row in page.read_text().splitlines():
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        method = None
        for item in re.findall(r"`([^`]+)`", cells[1]):
            words = item.split()
            if len(words) == 2 and words[0] in ("GET", "POST", "DELETE"):
                method, item = words
            if method is None or not item.startswith("/"):
                continue  # (a message, such as {"type": "stream"})
            found.add((method, item.split("?")[0].replace("NAME", "{name}")))
    return found


async def routes() -> set[tuple[str, str]]:
    app = create_app(Config(source="pattern", webrtc_port=0))
    return {(route.method, route.resource.canonical) for route in app.router.routes()
            if route.resource is not None and route.method not in ("HEAD", "OPTIONS")}


@pytest.mark.parametrize("page", ENDPOINT_TABLES, ids=lambda page: page.name)
async def test_every_documented_endpoint_is_a_route(page):
    documented = documented_endpoints(page)
    assert len(documented) >= 10, documented
    assert documented - await routes() == set()


async def test_every_route_is_documented():
    documented = set().union(*(documented_endpoints(page) for page in ENDPOINT_TABLES))
    assert await routes() - documented - set(UNLISTED_ROUTES) == set()
    for page, words in UNLISTED_ROUTES.values():
        text = " ".join(next(p for p in DOCS if p.name == page).read_text().split())
        assert words in text, (page, words)


def camtrack_commands(text: str) -> list[str]:
    """The code in `text` that is camtrack's (or the benchmark's): lines of code blocks and inline
    spans that run it, and inline spans that are a flag (`--mode passthrough`); not other programs'
    (`git worktree add --detach`, `mypy --strict`, `python -m pytest ... --durations=5`)."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    rest = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    code = [line for block in blocks for line in block.splitlines()] + re.findall(r"`([^`]+)`", rest)
    return [piece for piece in code if piece.startswith("--")
            or (any(c in piece for c in CAMTRACK_COMMANDS) and "pytest" not in piece)]


def test_every_flag_the_docs_name_exists():
    """A flag of a camtrack command (or a `--flag` alone) anywhere in the docs is camtrack's, or the
    benchmark's or a test client script's (their argparse declarations)."""
    known = {setting.flag for setting in OPTIONS} | {"--config", "--camera", "--help"} | OTHER_PROGRAMS_FLAGS
    # the benchmark's and the tests' client scripts' own (tests/gst_whep_client.py ...)
    for script in [*(ROOT / "bench").glob("*.py"), *(ROOT / "tests").glob("*.py")]:
        known |= set(re.findall(r"add_argument\(\s*\"(--[a-z][a-z0-9-]+)\"", script.read_text()))
    checked = 0
    unknown = set()
    for page in DOCS:
        for piece in camtrack_commands(page.read_text()):
            for flag in re.findall(FLAG, piece):
                checked += 1
                if flag not in known:
                    unknown.add((page.name, flag))
    assert checked > 50 and unknown == set()


async def test_every_metric_and_healthz_key_is_documented():
    """docs/health.md's metrics table has every metric a server exposes (ten were only in passing
    elsewhere, or nowhere), each one it lists is declared in camtrack/outputs/metrics.py (or an
    output's own metrics.py), and its
    /healthz paragraph names every top-level key."""
    async with TestClient(TestServer(create_app(Config(source="pattern", webrtc_port=0)))) as client:
        exposed = set(re.findall(r"^# TYPE (camtrack_\w+) (\w+)", await (await client.get("/metrics")).text(), re.M))
        health = await (await client.get("/healthz")).json()
    text = HEALTH.read_text()
    table = [row.split("|")[1] for row in text[text.index("## Metrics"):].splitlines() if row.startswith("| `camtrack_")]
    documented = {name for cell in table for name in re.findall(r"`(camtrack_\w+)`", cell)}
    # (a counter's samples end in _total: its family's TYPE line may say either)
    names = {name if kind != "counter" or name.endswith("_total") else f"{name}_total" for name, kind in exposed}
    assert len(names) > 20 and names - documented == set()
    # (an output's own metrics are declared beside it: camtrack/outputs/rtsp/metrics.py)
    declared = "".join(path.read_text() for path in (ROOT / "camtrack" / "outputs").rglob("metrics.py"))
    assert {name for name in documented if f'"{name.removesuffix("_total")}"' not in declared} == set()
    paragraph = " ".join(text[text.index("- `GET /healthz`"):].split("\n- ")[0].split())
    assert {key for key in health if f"`{key}`" not in paragraph} == set()


async def test_whep_preflights_are_answered_as_documented():
    """docs/watching.md: `OPTIONS` is 204 for the page's own origin and --allow-origin ones, 403 for
    any other (it said "any origin" while the server answered 403)."""
    text = " ".join(WATCHING.read_text().split())
    assert "any origin" not in text
    assert "`OPTIONS` answers CORS preflights from the page's own origin and those of `--allow-origin` (`204`), " \
           "and `403` to a page of any other origin" in text
    config = Config(source="pattern", webrtc_port=0, allow_origins=["https://viewer.example"])
    async with TestClient(TestServer(create_app(config), host="127.0.0.1")) as client:
        own = f"http://127.0.0.1:{client.port}"
        for origin, status in ((own, 204), ("https://viewer.example", 204), ("https://elsewhere.example", 403)):
            response = await client.options("/whep", headers={
                "Origin": origin, "Access-Control-Request-Method": "POST"})
            assert response.status == status, (origin, response.status, await response.text())


def recipes() -> list[str]:
    """The ffmpeg lines of docs/watching.md's recording recipe."""
    lines = [line for line in WATCHING.read_text().splitlines() if line.startswith("ffmpeg ") and "/mjpeg" in line]
    assert len(lines) == 2, lines
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("recipe", recipes(), ids=["copy", "h264"])
def test_the_mjpeg_recording_recipe_records(recipe, tmp_path):
    """The documented line, run as written (Debian's ffmpeg) against `python server.py`, for 3 s."""
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        pytest.skip("needs Debian's ffmpeg (apt-get install ffmpeg)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--host", "127.0.0.1", "--port", str(port),
                               "--camera", "porch=pattern", "--width", "320", "--height", "240",
                               "--webrtc-port", "0"], cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
                time.sleep(0.1)
        argv = recipe.replace("http://camera.local:8080", f"http://127.0.0.1:{port}").replace("-t 60", "-t 3").split()
        assert argv[-1].startswith("porch.")
        subprocess.run([argv[0], "-nostdin", "-loglevel", "error", *argv[1:]], cwd=tmp_path, check=True,
                       capture_output=True, timeout=60)
        probe_out = subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
             "stream=codec_name,width,height,nb_read_frames:format=duration", "-of", "default=nw=1", argv[-1]],
            cwd=tmp_path, capture_output=True, text=True, check=True, timeout=60).stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
    info = dict(line.split("=", 1) for line in probe_out.split())
    assert info["codec_name"] == ("mjpeg" if "-c copy" in recipe else "h264"), info
    assert (info["width"], info["height"]) == ("320", "240"), info
    # 3 s at the MJPEG stream's 15 fps (--mjpeg-fps), as they came: neither dropped nor made up
    assert 2.5 <= float(info["duration"]) <= 3.5, info
    assert 20 <= int(info["nb_read_frames"]) <= 50, info

