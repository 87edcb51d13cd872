"""camtrack behind real reverse proxies: Debian's nginx and Caddy, run by the test in a network namespace.

Each proxy serves TLS (a self-signed certificate the test makes) on a port other than 443, under the
path prefix /camera/, and upgrades the websocket; camtrack listens on loopback only, with
--base-path /camera/ --trusted-proxy 127.0.0.1 --allow-host cam.test. Chromium opens
https://cam.test:PORT/camera/ through each and plays the page over WebRTC; aiohttp clients from two
addresses through each are counted apart by --max-pending (as X-Forwarded-For names them, a forged
one ignored); a proxy that passes no Host of the browser's gets a page that says why it is refused.

The recipes in docs/deployment.md are copied from NGINX_SITE and CADDY_SITE (test_proxy.py checks it).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from . import netns as netns_mod
from .test_browser import CHROMIUM_FLAGS, WHEP_CLIENT, unavailable, wait_frames
from .test_browser import sandbox as sandbox  # noqa: F401 - the namespace and Chromium wrapper

ROOT = Path(__file__).resolve().parent.parent
NAME = "cam.test"
NGINX_PORT, CADDY_PORT, BARE_PORT, CAMTRACK_PORT = 8443, 8444, 8445, 8080
CAMTRACK = ["--host", "127.0.0.1", "--port", str(CAMTRACK_PORT), "--base-path", "/camera/",
            "--trusted-proxy", "127.0.0.1", "--allow-host", NAME]

#: the recipe of docs/deployment.md: nginx on 8443 in front of camtrack on 127.0.0.1:8080, under /camera/
NGINX_SITE = """\
map $http_upgrade $connection_upgrade {
    default upgrade;
    ''      close;
}

server {
    listen 8443 ssl;
    server_name cam.test;
    ssl_certificate     /etc/camtrack/cert.pem;
    ssl_certificate_key /etc/camtrack/key.pem;

    location /camera/ {
        proxy_pass http://127.0.0.1:8080;   # no URI part: /camera/ is passed on (camtrack --base-path /camera/)
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;            # the websocket
        proxy_set_header Connection $connection_upgrade;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_buffering off;                               # MJPEG, as it comes
        proxy_read_timeout 1h;                             # a viewer's websocket stays open
    }
}
"""

#: the recipe of docs/deployment.md: Caddy on 8444 (it upgrades websockets and sets X-Forwarded-For itself)
CADDY_SITE = """\
https://cam.test:8444 {
	tls /etc/camtrack/cert.pem /etc/camtrack/key.pem
	handle /camera/* {
		reverse_proxy 127.0.0.1:8080 {
			flush_interval -1
		}
	}
}
"""

#: a proxy that passes camtrack its own address as Host (nginx's default): the Origin cannot match
BARE_SITE = """\
server {
    listen 8445 ssl;
    ssl_certificate     /etc/camtrack/cert.pem;
    ssl_certificate_key /etc/camtrack/key.pem;
    location /camera/ {
        proxy_pass http://127.0.0.1:8080;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
    }
}
"""


def self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def in_place(site: str, cert: Path, key: Path) -> str:
    """A recipe as this test runs it: its certificate, and listening on the namespace's address only."""
    return (site.replace("/etc/camtrack/cert.pem", str(cert)).replace("/etc/camtrack/key.pem", str(key))
            .replace("listen 84", f"listen {netns_mod.SERVER_ADDRESS}:84"))


def nginx_conf(tmp: Path, cert: Path, key: Path) -> Path:
    temp = "\n".join(f"    {kind}_temp_path {tmp}/nginx-{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                                   "uwsgi", "scgi"))
    conf = tmp / "nginx.conf"
    conf.write_text(f"""\
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/nginx-access.log;
{temp}
{in_place(NGINX_SITE, cert, key)}
{in_place(BARE_SITE, cert, key)}
}}
""")
    return conf


def caddyfile(tmp: Path, cert: Path, key: Path) -> Path:
    site = in_place(CADDY_SITE, cert, key).replace("\ttls ", f"\tbind {netns_mod.SERVER_ADDRESS}\n\ttls ", 1)
    path = tmp / "Caddyfile"
    path.write_text("{\n\tadmin off\n\tauto_https disable_redirects\n}\n\n" + site)
    return path


#: run in the namespace: waits until every host:port given accepts a connection
WAIT_PORTS = """
import socket, sys, time
deadline = time.monotonic() + 30
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    while True:
        try:
            socket.create_connection((host, int(port)), 1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"{target} not listening")
            time.sleep(0.1)
"""

#: run in the namespace: per-client limits through a proxy, as X-Forwarded-For names the clients
CLIENTS = """
import asyncio, json, socket, sys
import aiohttp
import aiohttp.abc

class Resolver(aiohttp.abc.AbstractResolver):  # the test's name for the proxies' address (and its TLS SNI)
    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [{"hostname": host, "host": sys.argv[2], "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": 0}]
    async def close(self):
        pass

async def main(base):
    headers = {}
    def client(address):
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False, local_addr=(address, 0),
                                                                    resolver=Resolver()))
    one, two = client("198.51.100.1"), client("198.51.100.2")
    result = {}
    try:
        async with two.get(base + "cameras/default/snapshot.jpg", headers=headers) as r:
            result["snapshot"] = [r.status, (await r.read())[:2].hex()]
        async with two.get(base + "mjpeg", headers=headers) as r:
            result["mjpeg"] = [r.status, len(await r.content.readuntil(b"\\xff\\xd9"))]
        # 198.51.100.1 first, claiming to be 198.51.100.2; then two sessions of 198.51.100.2: one more than
        # --max-pending 2, and the client with the most loses its oldest
        a = await one.ws_connect(base + "ws", headers={**headers, "X-Forwarded-For": "198.51.100.2"})
        result["a"] = (await a.receive_json())["type"]
        b1 = await two.ws_connect(base + "ws", headers=headers)
        result["b1"] = (await b1.receive_json())["type"]
        b2 = await two.ws_connect(base + "ws", headers=headers)
        result["b2"] = (await b2.receive_json())["type"]
        result["b1 then"] = (await b1.receive_json(timeout=10))["type"]
        try:
            result["a then"] = (await a.receive_json(timeout=1.5))["type"]
        except asyncio.TimeoutError:
            result["a then"] = "still open"
        for ws in (a, b1, b2):
            await ws.close()
    finally:
        await one.close()
        await two.close()
    print(json.dumps(result))

asyncio.run(main(sys.argv[1]))
"""


class Processes:
    """camtrack, nginx and Caddy in the namespace, each with its log; all stopped at the end."""

    def __init__(self, ns: netns_mod.Netns, tmp: Path) -> None:
        self.ns, self.tmp = ns, tmp
        self.running: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, *argv: str, env: dict[str, str] | None = None) -> None:
        log = self.tmp / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(self.ns.command(*argv), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                       env={**os.environ, **(env or {})})
        self.running.append((name, process, log))

    def run(self, *argv: str, timeout: float = 40) -> str:
        result = subprocess.run(self.ns.command(*argv), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        assert result.returncode == 0, f"{argv[:3]}: {result.stdout}\n{result.stderr}\n{self.logs()}"
        return result.stdout

    def log(self, name: str) -> str:
        return next(log for n, _, log in self.running if n == name).read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {name}:\n{log.read_text(errors='replace')[-4000:]}" for name, _, log in self.running)

    def stop(self) -> None:
        for _, process, _ in reversed(self.running):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process, _ in self.running:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.slow
@pytest.mark.timeout(110)
@pytest.mark.parametrize("proxy", ["nginx", "caddy"])
def test_the_page_plays_through_a_proxy(sandbox, tmp_path, proxy):
    binary = shutil.which(proxy) or f"/usr/sbin/{proxy}"
    if not Path(binary).exists():
        unavailable(f"{proxy} is not installed (.ci/run installs nginx-light and caddy)")
    from playwright.sync_api import sync_playwright

    ns, wrapper = sandbox
    cert, key = self_signed(tmp_path)
    processes = Processes(ns, tmp_path)
    port = NGINX_PORT if proxy == "nginx" else CADDY_PORT
    url = f"https://{NAME}:{port}/camera/"
    try:
        processes.start("camtrack", sys.executable, str(ROOT / "server.py"), *CAMTRACK, "--source", "pattern",
                        "--width", "320", "--height", "240", "--ice-address", netns_mod.SERVER_ADDRESS,
                        "--max-pending", "2", "--linger", "1")
        if proxy == "nginx":
            processes.start("nginx", binary, "-c", str(nginx_conf(tmp_path, cert, key)), "-p", str(tmp_path))
        else:
            home = tmp_path / "caddy-home"
            processes.start("caddy", binary, "run", "--config", str(caddyfile(tmp_path, cert, key)),
                            "--adapter", "caddyfile",
                            env={"HOME": str(home), "XDG_DATA_HOME": str(home), "XDG_CONFIG_HOME": str(home)})
        processes.run(sys.executable, "-c", WAIT_PORTS, f"127.0.0.1:{CAMTRACK_PORT}",
                      f"{netns_mod.SERVER_ADDRESS}:{port}")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(wrapper), headless=True, args=[
                *CHROMIUM_FLAGS, f"--host-resolver-rules=MAP {NAME} {netns_mod.SERVER_ADDRESS}"])
            try:
                # (camera permission: without it this Chromium signals no host candidate, only the end of
                # them, and aioice may fail the ICE before Chromium's first check arrives, on main too)
                context = browser.new_context(ignore_https_errors=True, permissions=["camera"])
                page = context.new_page()
                page.goto(url, timeout=15000)
                page.wait_for_function("window.camtrack && window.camtrack.state === 'live'", timeout=30000)
                stats = wait_frames(page, 10)
                assert stats["codec"].lower() == "video/h264"
                assert page.evaluate("window.camtrack.transport") == "webrtc"
                # WHEP from the page, relative to it: its Location under the prefix too
                whep = page.evaluate(WHEP_CLIENT, "whep")
                assert whep["status"] == 201 and whep["frames"] > 10 and whep["deleted"] == 200, whep
                page.close()
                # the fallbacks through the proxy: the packets over the websocket, and MJPEG
                for query, transport in (("?transport=ws", "websocket"), ("?transport=ws&decoder=mjpeg", "mjpeg")):
                    page = context.new_page()
                    page.goto(url + query, timeout=15000)
                    page.wait_for_function(f"window.camtrack && window.camtrack.state === 'live' && "
                                           f"window.camtrack.transport === '{transport}' && "
                                           f"window.camtrack.view().width === 320", timeout=30000)
                    page.close()
                if proxy == "nginx":
                    # a proxy that passes camtrack's own address as Host: the page says why, not "reconnecting"
                    page = context.new_page()
                    page.goto(f"https://{NAME}:{BARE_PORT}/camera/", timeout=15000)
                    page.wait_for_function("window.camtrack && window.camtrack.state === 'refused'", timeout=20000)
                    # (read while it says so: it tries again after its back-off)
                    page.wait_for_function(f"document.getElementById('status').textContent.includes("
                                           f"\"Origin 'https://{NAME}:{BARE_PORT}'\") && document.getElementById("
                                           f"'status').textContent.includes(\"Host '127.0.0.1:8080'\")", timeout=20000)
                    page.close()
            finally:
                browser.close()
        result = json.loads(processes.run(sys.executable, "-c", CLIENTS, url,
                                          netns_mod.SERVER_ADDRESS).strip().splitlines()[-1])
        assert result == {"snapshot": [200, "ffd8"], "mjpeg": [200, result["mjpeg"][1]], "a": "hello",
                          "b1": "hello", "b2": "hello", "b1 then": "bye", "a then": "still open"}, result
        log = processes.log("camtrack")
        # every viewer logged as the address the proxy named, none as the proxy's own
        assert "viewer 198.51.100." in log and "viewer 127.0.0.1" not in log, log
        # the refused page's attempts, one line each (it retries with back-off; POST ws logs nothing)
        refusals = [line for line in log.splitlines() if "refused websocket from" in line]
        assert bool(refusals) is (proxy == "nginx"), log
        assert all(f"Origin 'https://{NAME}:{BARE_PORT}'" in line and "Host '127.0.0.1:8080'" in line
                   for line in refusals), refusals
    except BaseException:
        print(processes.logs())
        raise
    finally:
        processes.stop()
