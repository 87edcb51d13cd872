"""--turn-secret: TURN credentials that expire, checked against a real coturn.

In a network namespace where nftables drops every UDP datagram between the viewer's address and
the server's except those to and from the TURN port, a viewer given the credentials of the
server's hello can reach the server only through coturn, and plays.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from camtrack.outputs.webrtc.ice import TURN_CREDENTIAL_TTL, IceContext, turn_credentials
from camtrack.outputs.webrtc.whep import link_headers

from . import netns as netns_mod

ROOT = Path(__file__).resolve().parent.parent
SECRET = "c0turn-shared-s3cret"
TURN_PORT = 3478
HTTP_PORT = 8080


def check(username: str, password: str, secret: str = SECRET) -> None:
    """`password` is what coturn's use-auth-secret expects for `username`, which expires in a TTL."""
    expiry, _, name = username.partition(":")
    assert name == "camtrack"
    assert abs(int(expiry) - (time.time() + TURN_CREDENTIAL_TTL)) < 60
    expected = base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    assert password == expected


def test_credentials_are_coturns_rest_api_ones_and_expire():
    username, password = turn_credentials(SECRET)
    check(username, password)
    later, _ = turn_credentials(SECRET, now=time.time() + 3600)
    assert later != username  # made when asked, not once
    ice = IceContext(["stun:192.0.2.1:3478", "turn:192.0.2.1:3478?transport=tcp"], SECRET)
    stun_server, turn_server = ice.browser_servers()
    assert stun_server == {"urls": "stun:192.0.2.1:3478"}
    assert turn_server["urls"] == "turn:192.0.2.1:3478?transport=tcp"
    check(turn_server["username"], turn_server["credential"])
    # the peers camtrack makes itself get such credentials too
    (configured,) = [s for s in ice.rtc_configuration().iceServers or [] if str(s.urls).startswith("turn:")]
    assert configured.username is not None and configured.credential is not None
    check(configured.username, configured.credential)
    (link,) = [h for h in link_headers(ice) if h.startswith("<turn:")]
    found = re.fullmatch(r'<turn:192\.0\.2\.1:3478\?transport=tcp>; rel="ice-server"; username="([^"]+)"; '
                         r'credential="([^"]+)"; credential-type="password"', link)
    assert found, link
    check(found[1], found[2])


async def test_hello_and_whep_links_carry_fresh_credentials_and_no_secret(serve):
    # (nothing listens at 127.0.0.1:9: the server's own peer gets no relay candidate, and answers anyway)
    url, app = await serve(width=320, height=240, ice_servers=["turn:127.0.0.1:9"], turn_secret=SECRET)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url) as ws:
            hello = await ws.receive_json(timeout=10)
        (server,) = hello["iceServers"]
        assert server["urls"] == "turn:127.0.0.1:9"
        check(server["username"], server["credential"])
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        try:
            async with http.post(url.removesuffix("/ws") + "/whep", data=pc.localDescription.sdp,
                                 headers={"Content-Type": "application/sdp"}) as r:
                assert r.status == 201, await r.text()
                (link,) = r.headers.getall("Link")
                await r.text()
        finally:
            await pc.close()
    found = re.fullmatch(r'<turn:127\.0\.0\.1:9>; rel="ice-server"; username="([^"]+)"; credential="([^"]+)"; '
                         r'credential-type="password"', link)
    assert found, link
    check(found[1], found[2])
    assert SECRET not in json.dumps(hello) and SECRET not in link


def require(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:  # CI installs it (.ci/run): a missing one is a failure, never a skip
        pytest.fail(f"{program} is missing: apt-get install {package}")
    return path


def wait_until(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:g} s")
        time.sleep(0.1)


@pytest.mark.timeout(240)
def test_a_viewer_that_can_only_reach_the_server_through_turn_plays(tmp_path):
    turnserver = require("turnserver", "coturn")
    require("nft", "nftables")
    server_ip, viewer_ip = netns_mod.SERVER_ADDRESS, netns_mod.BROWSER_ADDRESS
    ns = netns_mod.create(f"camtrack-turn-{os.getpid()}")  # NetnsUnavailable fails the test
    logs = {name: tmp_path / f"{name}.log" for name in ("coturn", "server")}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        # every UDP datagram between the two addresses is dropped, unless it is to or from TURN
        rules = f"""
table inet camtrack_turn {{
    chain out {{
        type filter hook output priority 0; policy accept;
        ip saddr {viewer_ip} ip daddr {server_ip} udp dport != {TURN_PORT} drop
        ip saddr {server_ip} ip daddr {viewer_ip} udp sport != {TURN_PORT} drop
    }}
}}
"""
        nft = subprocess.run(ns.command("nft", "-f", "-"), input=rules, capture_output=True, text=True)
        assert nft.returncode == 0, nft.stderr
        with open(logs["coturn"], "wb") as out:
            processes.append(subprocess.Popen(ns.command(
                turnserver, "-n", "-v", f"--listening-ip={server_ip}", f"--relay-ip={server_ip}",
                f"--listening-port={TURN_PORT}", "--min-port=49152", "--max-port=49300", "--use-auth-secret",
                f"--static-auth-secret={SECRET}", "--realm=camtrack.test", "--no-tls", "--no-dtls", "--no-cli",
                "--log-file=stdout", "--simple-log", f"--pidfile={tmp_path / 'turn.pid'}", f"--db={tmp_path / 'turn.db'}"),
                stdout=out, stderr=subprocess.STDOUT))

        def turn_listens() -> bool:
            assert processes[0].poll() is None, logs["coturn"].read_text(errors="replace")
            ss = subprocess.run(ns.command("ss", "-Hlun", f"sport = :{TURN_PORT}"), capture_output=True, text=True)
            return server_ip in ss.stdout

        wait_until(turn_listens, "coturn did not listen")
        env = {k: v for k, v in os.environ.items() if k not in ("CAMTRACK_TOKEN", "CAMTRACK_TURN_SECRET")}
        env["CAMTRACK_TURN_SECRET"] = SECRET  # (as an operator would: not on the command line)
        with open(logs["server"], "wb") as out:
            processes.append(subprocess.Popen(ns.command(
                sys.executable, "-m", "camtrack", "--source", "pattern", "--width", "320", "--height", "240",
                "--host", server_ip, "--port", str(HTTP_PORT), "--ice-address", server_ip,
                "--ice-server", f"turn:{server_ip}:{TURN_PORT}"), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
        run = subprocess.run(ns.command(sys.executable, "-m", "tests.turn_scenario",
                                        f"http://{server_ip}:{HTTP_PORT}/ws", viewer_ip),
                             cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, (run.stderr[-4000:], logs["server"].read_text(errors="replace")[-3000:])
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result["frames"] == 10 and result["width"] == 320, result
        (server,) = result["iceServers"]
        assert server["urls"] == f"turn:{server_ip}:{TURN_PORT}"
        check(server["username"], server["credential"])
        # nothing but TURN could carry it: the viewer's own end of the path is its relay allocation
        assert result["local"] == "relay", result
        # coturn took the credentials of both ends: the viewer's (from the hello) and those camtrack
        # made for its own peer
        coturn_log = logs["coturn"].read_text(errors="replace")
        allocations = re.findall(r"user <(\d+:camtrack)>: incoming packet ALLOCATE processed, success", coturn_log)
        assert len(allocations) >= 2, coturn_log[-3000:]
        server_log = logs["server"].read_text(errors="replace")
        assert SECRET not in server_log
        assert "WebRTC on UDP port 8555" in server_log
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        ns.delete()
