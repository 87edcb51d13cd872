"""Behind a reverse proxy: Origin against Host as proxies send them, --trusted-proxy, --base-path.

The header logic here, fast; tests/test_reverse_proxy.py runs real nginx and Caddy in front of camtrack
with Chromium playing the page through them.
"""

from __future__ import annotations

import logging

import aiohttp
import pytest

from camtrack.access import TrustedProxies, origin_matches_host
from camtrack.app import CAMERAS
from camtrack.client import Viewer

from .conftest import eventually
from .test_whep import base, offer

#: (the page's Origin, the Host header camtrack got, same origin?)
ORIGINS = [
    # straight from the browser: the same name and port (the scheme's default when not named)
    ("http://cam.example:8080", "cam.example:8080", True),
    ("https://cam.example", "cam.example", True),
    ("https://cam.example", "cam.example:443", True),
    ("http://cam.example", "cam.example:80", True),
    ("https://CAM.example:8443", "cam.EXAMPLE.:8443", True),
    ("https://[2001:db8::1]:8443", "[2001:db8::1]:8443", True),
    # through a proxy on a port other than 443 that sends nginx's $host (no port): the name decides
    ("https://cam.example:8443", "cam.example", True),
    ("https://[2001:db8::1]:8443", "[2001:db8::1]", True),
    # another port named, another name, another scheme's default port: another origin
    ("https://cam.example:8443", "cam.example:9443", False),
    ("https://cam.example", "cam.example:8443", False),
    ("http://cam.example", "cam.example:443", False),
    ("https://cam.example:8443", "other.example", False),
    ("https://cam.example.evil.example", "cam.example", False),
    ("https://evil.example", "evil.example@cam.example", False),
    ("https://user@cam.example", "cam.example", False),
    ("null", "cam.example", False),
    ("file://", "cam.example", False),
    ("ftp://cam.example", "cam.example", False),
    ("", "cam.example", False),
]


@pytest.mark.parametrize("origin, host, same", ORIGINS)
def test_origin_against_host_as_browsers_and_proxies_send_them(origin, host, same):
    assert origin_matches_host(origin, host) is same


PROXIES = ["127.0.0.1", "10.0.0.0/8", "2001:db8:a::/48"]
#: (the peer, the request's forwarding headers, the client camtrack counts)
HOPS = [
    # a trusted proxy's X-Forwarded-For: the rightmost hop it did not get from another trusted proxy
    ("127.0.0.1", {"X-Forwarded-For": "198.51.100.7"}, "198.51.100.7"),
    ("127.0.0.1", {"X-Forwarded-For": "203.0.113.66, 198.51.100.7"}, "198.51.100.7"),  # a client's forgery, appended to
    ("127.0.0.1", {"X-Forwarded-For": "203.0.113.66, 198.51.100.7, 10.1.2.3"}, "198.51.100.7"),  # two proxies
    ("10.1.2.3", {"X-Forwarded-For": "10.9.9.9, 10.1.1.1"}, "10.9.9.9"),  # every hop trusted: the first
    ("127.0.0.1", {"X-Forwarded-For": "198.51.100.7:4711"}, "198.51.100.7"),
    ("127.0.0.1", {"X-Forwarded-For": "2001:db8::7"}, "2001:db8::7"),
    ("127.0.0.1", {"X-Forwarded-For": "[2001:db8::7]:4711"}, "2001:db8::7"),
    ("::ffff:127.0.0.1", {"X-Forwarded-For": "198.51.100.7"}, "198.51.100.7"),
    ("2001:db8:a::1", {"X-Forwarded-For": "198.51.100.7"}, "198.51.100.7"),
    # a hop that names no address stops the walk at the proxy that passed it on
    ("127.0.0.1", {"X-Forwarded-For": "198.51.100.7, unknown, 10.1.1.1"}, "10.1.1.1"),
    ("127.0.0.1", {"X-Forwarded-For": "junk"}, "127.0.0.1"),
    ("127.0.0.1", {"X-Forwarded-For": ""}, "127.0.0.1"),
    ("127.0.0.1", {}, "127.0.0.1"),
    # RFC 7239 Forwarded, when there is no X-Forwarded-For
    ("127.0.0.1", {"Forwarded": 'for=203.0.113.66, for="[2001:db8:cafe::17]:4711";proto=https;by=10.0.0.1'},
     "2001:db8:cafe::17"),
    ("127.0.0.1", {"Forwarded": "for=198.51.100.7;proto=https, for=10.1.1.1"}, "198.51.100.7"),
    ("127.0.0.1", {"Forwarded": "for=_hidden, for=10.1.1.1"}, "10.1.1.1"),
    ("127.0.0.1", {"Forwarded": "proto=https"}, "127.0.0.1"),
    # X-Forwarded-For wins: a proxy that appends to it passes a client's Forwarded on untouched
    ("127.0.0.1", {"Forwarded": "for=203.0.113.66", "X-Forwarded-For": "198.51.100.7"}, "198.51.100.7"),
    # from anyone but a trusted proxy the headers are ignored
    ("198.51.100.7", {"X-Forwarded-For": "203.0.113.66"}, "198.51.100.7"),
    ("127.0.0.2", {"X-Forwarded-For": "203.0.113.66", "Forwarded": "for=203.0.113.67"}, "127.0.0.2"),
    ("10.0.0.1%eth0", {"X-Forwarded-For": "203.0.113.66"}, "203.0.113.66"),
]


@pytest.mark.parametrize("peer, headers, client", HOPS)
def test_the_client_a_trusted_proxy_names(peer, headers, client):
    assert TrustedProxies(PROXIES).client(peer, headers) == client


def test_no_trusted_proxy_reads_no_header():
    assert TrustedProxies([]).client("127.0.0.1", {"X-Forwarded-For": "198.51.100.7"}) == "127.0.0.1"


async def test_a_proxy_that_drops_the_port_lets_the_page_in(serve, caplog):
    """nginx's usual recipe (Host $host) on port 8443, after --allow-host: the page's websocket, WHEP, and
    a foreign page refused with one log line that says what was compared."""
    url, _ = await serve(width=320, height=240, allow_hosts=["cam.example"])
    root = base(url)
    page = {"Host": "cam.example", "Origin": "https://cam.example:8443"}
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, headers=page) as ws:
            assert (await ws.receive_json())["type"] == "hello"
        async with http.post(root + "/ws", headers=page) as r:  # what the page asks when its socket fails
            assert r.status == 204
        async with http.options(root + "/whep", headers=page) as r:
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "https://cam.example:8443"
        # the proxy's port named in Host (Caddy, nginx's $http_host): that port only
        async with http.ws_connect(url, headers={**page, "Host": "cam.example:8443"}) as ws:
            assert (await ws.receive_json())["type"] == "hello"
        caplog.clear()
        foreign = {"Host": "cam.example:8443", "Origin": "https://cam.example:9443"}
        # (from an address of its own: log lines are rate-limited per client, and other tests used 127.0.0.1's)
        own = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.77", 0)))
        with caplog.at_level(logging.WARNING):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with own, own.ws_connect(url, headers=foreign):
                    pass
            assert refused.value.status == 403
            lines = [r.getMessage() for r in caplog.records if "refused websocket" in r.getMessage()]
            assert len(lines) == 1 and "\n" not in lines[0]
            assert "'https://cam.example:9443'" in lines[0] and "'cam.example:8443'" in lines[0], lines
            assert "--allow-origin https://cam.example:9443" in lines[0]
            # the page's question gets the same words
            async with http.post(root + "/ws", headers=foreign) as r:
                assert r.status == 403
                text = await r.text()
                assert text.startswith("refused: ") and "'cam.example:8443'" in text and text.count("\n") == 1


async def test_a_trusted_proxy_names_the_client_for_limits_and_logs(serve, caplog):
    """With --trusted-proxy 127.0.0.1, --max-pending 2: the client with the most pending sessions (as
    X-Forwarded-For names it) loses its oldest; a forged header from another peer names nobody."""
    url, app = await serve(width=320, height=240, trusted_proxies=["127.0.0.1"], max_pending=2)
    cameras = app[CAMERAS]
    first, second = {"X-Forwarded-For": "198.51.100.7"}, {"X-Forwarded-For": "203.0.113.66, 198.51.100.8"}
    stranger = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))
    async with aiohttp.ClientSession() as http:
        try:
            with caplog.at_level(logging.INFO):
                a = await http.ws_connect(url, headers=first)
                assert (await a.receive_json())["type"] == "hello"
                b1 = await http.ws_connect(url, headers=second)
                assert (await b1.receive_json())["type"] == "hello"
                b2 = await http.ws_connect(url, headers=second)
                assert (await b2.receive_json())["type"] == "hello"
                # one more than --max-pending: 198.51.100.8 has the most, its oldest goes (not a, the oldest)
                await eventually(lambda: cameras.pending_evicted == 1)
                assert sorted(s.remote for s in cameras.pending) == ["198.51.100.7", "198.51.100.8"]
                assert (await b1.receive_json())["type"] == "bye"
                assert not a.closed
                messages = " ".join(r.getMessage() for r in caplog.records)
                assert "viewer 198.51.100.7 connected" in messages and "viewer 198.51.100.8 connected" in messages
                await b2.close()
                await eventually(lambda: len(cameras.pending) == 1)
                # not a trusted proxy: its header is not read
                s = await stranger.ws_connect(url, headers={"X-Forwarded-For": "198.51.100.9"})
                assert (await s.receive_json())["type"] == "hello"
                await eventually(lambda: len(cameras.pending) == 2)
                assert sorted(s.remote for s in cameras.pending) == ["127.0.0.2", "198.51.100.7"]
                await s.close()
                await a.close()
        finally:
            await stranger.close()


async def test_everything_under_a_base_path(serve):
    """--base-path /camera/: the page, its scripts, /ws, WHEP, MJPEG, snapshots, /api and /healthz under
    the prefix (the page's own URLs relative), nothing outside it."""
    url, app = await serve(width=320, height=240, base_path="/camera/")
    root = base(url)
    prefix = root + "/camera/"
    async with aiohttp.ClientSession() as http:
        async with http.get(root + "/camera?camera=default", allow_redirects=False) as r:
            assert r.status == 308 and r.headers["Location"] == "/camera/?camera=default"
        async with http.get(prefix) as r:
            page = await r.text()
            assert r.status == 200 and "<video" in page
        assert 'src="/' not in page and 'href="/' not in page  # the page's URLs are relative
        for path in ("static/app.js", "static/ui.js", "static/wsplayer.js", "static/style.css"):
            async with http.get(prefix + path) as r:
                assert r.status == 200, path
                script = await r.text()
                for absolute in ('fetch("/', "fetch(`/", "src = `/", "${location.host}/"):
                    assert absolute not in script, (path, absolute)
        async with http.get(prefix + "api/cameras") as r:
            assert r.status == 200 and (await r.json())["cameras"][0]["name"] == "default"
        async with http.get(prefix + "healthz") as r:
            assert r.status == 200
        async with http.get(prefix + "cameras/default/snapshot.jpg") as r:
            assert r.status == 200 and (await r.read())[:2] == b"\xff\xd8"
        async with http.get(prefix + "mjpeg") as r:
            assert r.status == 200 and (await r.content.readuntil(b"\xff\xd8"))
        for path in ("/", "/healthz", "/api/cameras", "/static/app.js", "/snapshot.jpg", "/ws"):
            async with http.get(root + path) as r:
                assert r.status == 404, path
        async with http.get(prefix + "healthz", headers={"Host": "evil.example"}) as r:
            assert r.status == 421  # the Host check covers the prefix
        pc, sdp = await offer()
        async with http.post(prefix + "whep", data=sdp, headers={"Content-Type": "application/sdp"}) as r:
            assert r.status == 201, await r.text()
            location = r.headers["Location"]
        assert location.startswith("/camera/cameras/default/whep/")
        async with http.delete(root + location) as r:
            assert r.status == 200
        await pc.close()
        viewer = Viewer(prefix + "ws")
        try:
            await viewer.connect()
            frames = await viewer.frames(5)
            assert frames[-1].width == 320
        finally:
            await viewer.close()
    await eventually(lambda: app[CAMERAS].viewer_count == 0 and not app[CAMERAS].pending)


def test_the_documented_recipes_are_the_tested_ones():
    from pathlib import Path

    from .test_reverse_proxy import CADDY_SITE, CAMTRACK, NGINX_SITE

    page = (Path(__file__).resolve().parent.parent / "docs" / "deployment.md").read_text()
    assert f"```nginx\n{NGINX_SITE}```" in page and f"```caddy\n{CADDY_SITE}```" in page
    assert " ".join(CAMTRACK) in page.replace(" \\\n        ", "")


async def test_a_trusted_proxys_forwarded_host_counts_for_the_origin(serve):
    """A proxy that passes camtrack's own address as Host but the browser's in X-Forwarded-Host (or
    Forwarded: host=): same origin when the proxy is trusted, another origin from anyone else."""
    url, _ = await serve(width=320, height=240, trusted_proxies=["127.0.0.1"])
    page = {"Origin": "https://cam.example:8443", "X-Forwarded-For": "198.51.100.7"}
    stranger = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))
    async with aiohttp.ClientSession() as http, stranger:
        for forwarded in ({"X-Forwarded-Host": "cam.example:8443"}, {"Forwarded": 'for=198.51.100.7;host="cam.example"'}):
            async with http.ws_connect(url, headers={**page, **forwarded}) as ws:
                assert (await ws.receive_json())["type"] == "hello"
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with stranger.ws_connect(url, headers={**page, **forwarded}):
                    pass
            assert refused.value.status == 403
