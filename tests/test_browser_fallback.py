"""The websocket fallback in real headless Chromium: with UDP dropped in the namespace the page plays
the camera's packets over its websocket (MSE on plain HTTP, WebCodecs over HTTPS); `?transport=ws`
forces it."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from . import netns as netns_mod
from .test_browser import CHROMIUM_FLAGS, PORT, Server, unavailable
from .test_browser import sandbox as sandbox  # noqa: F401 - the namespace and Chromium wrapper

#: frames the page has shown, whichever way it plays
FRAMES_SHOWN = """async () => {
  const c = window.camtrack;
  if (!c) return 0;
  if (c.player) return c.player.stats.frames;
  if (!c.pc) return 0;
  let frames = 0;
  (await c.pc.getStats()).forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") frames = r.framesDecoded || 0; });
  return frames;
}"""


@contextlib.contextmanager
def udp_blocked(ns: netns_mod.Netns, hook: str = "output"):
    """No UDP in the namespace (an nftables rule): on the output hook every send fails at once
    (the server's peer fails and says bye), on the input hook datagrams vanish silently (nobody
    notices before the page's own 3 s deadline)."""
    if shutil.which("nft") is None:
        unavailable("nft is not installed (apt-get install nftables)")
    for rule in (["add", "table", "inet", "camtrack"],
                 ["add", "chain", "inet", "camtrack", "out", f"{{ type filter hook {hook} priority 0; }}"],
                 ["add", "rule", "inet", "camtrack", "out", "meta", "l4proto", "udp", "drop"]):
        subprocess.run(ns.command("nft", *rule), check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(ns.command("nft", "delete", "table", "inet", "camtrack"), capture_output=True)


def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the server's address (cryptography comes with aiortc)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, netns_mod.SERVER_ADDRESS)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(netns_mod.SERVER_ADDRESS))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@contextlib.contextmanager
def chromium_and_server(sandbox, tmp_path: Path, *options: str):
    from playwright.sync_api import sync_playwright

    ns, wrapper = sandbox
    log = tmp_path / "server.log"
    servers = [Server(ns, log, "h264", *options)]

    def restart() -> None:
        servers[-1].stop()
        servers.append(Server(ns, log, "h264", *options))

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(wrapper), args=CHROMIUM_FLAGS, headless=True)
            try:
                yield browser.new_context(ignore_https_errors=True, viewport={"width": 800, "height": 600}), restart
            finally:
                browser.close()
    except BaseException:
        print(log.read_text() if log.exists() else "(no server log)")
        raise
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.stop()


@contextlib.contextmanager
def webcodecs_page(sandbox, tmp_path: Path):
    """Chromium and server.py (320x240) on HTTPS (WebCodecs needs a secure context), the page playing
    the websocket fallback (?transport=ws) with its WebCodecs player: the page."""
    cert, key = certificate(tmp_path)
    base = f"https://{netns_mod.SERVER_ADDRESS}:{PORT}/"
    with chromium_and_server(sandbox, tmp_path, "--cert", str(cert), "--key", str(key), "--width", "320",
                             "--height", "240") as (context, _restart):
        wait_for_server(context, base)
        page, _ = plays(context, base, "?transport=ws", frames=10)
        assert page.evaluate("[window.camtrack.transport, window.camtrack.decoder]") == ["websocket", "webcodecs"]
        yield page


def wait_for_server(context, base: str, timeout: float = 30.0) -> None:
    """Until the server answers in the namespace (a page that loads; then closed)."""
    page = context.new_page()
    deadline = time.monotonic() + timeout
    while True:
        try:
            page.goto(base + "healthz", timeout=5000)
            break
        except Exception:  # noqa: BLE001 - connection refused until the server listens
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    page.close()


def plays(context, base: str, path: str = "", frames: int = 30) -> tuple[object, float]:
    """Open the page; it shows `frames` frames. Returns the page and the seconds to its first frame."""
    page = context.new_page()
    changed: list[str] = []

    def said(message) -> None:
        print(f"page: {message.type}: {message.text}")
        if "ERR_NETWORK_CHANGED" in message.text:
            changed.append(message.text)

    page.on("console", said)
    opened = time.monotonic()
    page.goto(base + path, timeout=15000)
    try:
        wait_frames(page, 0)
    except AssertionError:
        # Chromium saw the namespace's network change under it (its addresses settling: once, in a
        # full CI run, the first browser test after the namespace was made) and failed to load the
        # page's scripts: the page never started. Loaded again once, as a user would; else it failed.
        if not changed:
            raise
        print(f"page: loaded again after {len(changed)} loads failed with ERR_NETWORK_CHANGED")
        opened = time.monotonic()
        page.reload(timeout=15000)
        wait_frames(page, 0)
    first = time.monotonic() - opened
    wait_frames(page, frames)
    return page, first


def wait_frames(page, minimum: int, timeout: float = 30.0) -> int:
    """Until the page has shown more than `minimum` frames (polled: wait_for_function does not
    wait for a promise's value)."""
    deadline = time.monotonic() + timeout
    while (shown := page.evaluate(FRAMES_SHOWN)) <= minimum:
        if time.monotonic() > deadline:
            raise AssertionError(f"{shown} frames shown in {timeout} s; state {page.locator('#status').inner_text()}")
        time.sleep(0.05)
    return shown


def check_overlay(page) -> dict:
    """The overlay says the transport and reads the latency stamp from what is shown."""
    page.click("#info")
    page.wait_for_function("window.camtrack.stats && window.camtrack.stats.resolution === '640×480'"
                           " && /^-?\\d+ ms$/.test(window.camtrack.stats['glass-to-glass'])"
                           " && window.camtrack.stats.fps !== '-'", timeout=20000)
    stats = page.evaluate("window.camtrack.stats")
    latency = page.evaluate("window.camtrack.latency")
    assert 0 <= latency < 2000, latency
    return stats


#: a WebRTC that never gets anywhere and never says so: the page's offer and candidates are lost on
#: the way (so the server has no peer to fail either); only the page's own deadline can notice
ICE_HANGS = """(() => {
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    if (typeof data === "string" && /"type":"(offer|candidate)"/.test(data)) return;
    return send.call(this, data);
  };
})();"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("hook", ["output", "input", "webrtc hangs"])
def test_udp_blocked_plain_http_plays_over_mse(sandbox, tmp_path, hook):
    """UDP dropped on the output hook (every send fails) or the input hook (datagrams vanish), or a
    WebRTC that hangs without failing: each way the page plays over the websocket, within 10 s."""
    ns, _ = sandbox
    base = f"http://{netns_mod.SERVER_ADDRESS}:{PORT}/"
    blocked = udp_blocked(ns, hook) if hook != "webrtc hangs" else contextlib.nullcontext()
    with blocked, chromium_and_server(sandbox, tmp_path) as (context, restart):
        wait_for_server(context, base)
        if hook == "webrtc hangs":
            context.add_init_script(ICE_HANGS)
        page, first = plays(context, base)
        state = page.evaluate("[window.camtrack.transport, window.camtrack.decoder, window.isSecureContext]")
        assert state == ["websocket", "mse", False], state
        assert first < 10, f"first frame after {first:.1f} s"
        if hook == "webrtc hangs":
            assert first > 2.5, f"fell back after {first:.1f} s, before the page's 3 s deadline"
        stats = check_overlay(page)
        assert stats["transport"] == "websocket (MSE)", stats
        print(f"\n{hook}: plain HTTP: MSE, first frame {first:.1f} s after opening; overlay {stats}")
        # the snapshot button works the same
        with page.expect_download(timeout=20000) as download:
            page.click("#snapshot")
        assert download.value.suggested_filename.endswith(".jpg")


@pytest.mark.timeout(180)
def test_udp_blocked_https_plays_over_webcodecs(sandbox, tmp_path):
    ns, _ = sandbox
    cert, key = certificate(tmp_path)
    base = f"https://{netns_mod.SERVER_ADDRESS}:{PORT}/"
    with udp_blocked(ns), chromium_and_server(sandbox, tmp_path, "--cert", str(cert), "--key", str(key)) as (
            context, restart):
        wait_for_server(context, base)
        page, first = plays(context, base)
        state = page.evaluate("[window.camtrack.transport, window.camtrack.decoder, window.isSecureContext]")
        assert state == ["websocket", "webcodecs", True], state
        assert first < 10, f"first frame after {first:.1f} s"
        stats = check_overlay(page)
        assert stats["transport"] == "websocket (WebCodecs)", stats
        print(f"\nUDP blocked, HTTPS: WebCodecs, first frame {first:.1f} s after opening; overlay {stats}")
        page.click("#fullscreen")
        page.wait_for_function("document.fullscreenElement !== null", timeout=10000)


@pytest.mark.timeout(180)
def test_transport_ws_forces_the_fallback_and_webrtc_is_the_default(sandbox, tmp_path):
    base = f"http://{netns_mod.SERVER_ADDRESS}:{PORT}/"
    with chromium_and_server(sandbox, tmp_path) as (context, restart):
        wait_for_server(context, base)
        page, _ = plays(context, base)
        assert page.evaluate("[window.camtrack.transport, window.camtrack.decoder]") == ["webrtc", "webrtc"]
        forced, first = plays(context, base, "?transport=ws")
        assert forced.evaluate("[window.camtrack.transport, window.camtrack.decoder]") == ["websocket", "mse"]
        assert first < 3, f"forced: first frame after {first:.1f} s (no WebRTC attempt to wait for)"
        metrics = forced.evaluate("fetch('/metrics').then((r) => r.text())")
        assert 'transport="ws-video"} 1.0' in metrics
        # the server restarts: the page comes back by itself, over the websocket again
        restart()
        forced.wait_for_function("window.camtrack.connects >= 2 && window.camtrack.state === 'live'", timeout=45000)
        assert forced.evaluate("window.camtrack.decoder") == "mse"
        shown = wait_frames(forced, 0)
        wait_frames(forced, shown + 30)
        # a browser that can play neither: the MJPEG picture, with the same overlay and latency readout
        mjpeg = context.new_page()
        mjpeg.goto(base + "?transport=ws&decoder=mjpeg")
        mjpeg.wait_for_function("window.camtrack.state === 'live' && window.camtrack.view().width === 640",
                                timeout=30000)
        assert mjpeg.evaluate("window.camtrack.transport") == "mjpeg"
        assert check_overlay(mjpeg)["transport"] == "MJPEG"
