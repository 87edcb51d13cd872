"""Other websites stay out: the Host check on every route (DNS rebinding) and WHEP's Origin rule."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from camtrack.access import HostCheck, host_name
from camtrack.app import CAMERAS

from .test_whep import base, offer

EVIL = {"Host": "evil.example"}
#: every route, as (method, path)
ROUTES = [("GET", "/"), ("GET", "/healthz"), ("GET", "/api/cameras"), ("GET", "/metrics"),
          ("GET", "/static/app.js"), ("GET", "/mjpeg"), ("GET", "/snapshot.jpg"),
          ("GET", "/cameras/default/mjpeg"), ("GET", "/cameras/default/snapshot.jpg"),
          ("POST", "/whep"), ("OPTIONS", "/whep"), ("POST", "/cameras/default/whep"),
          ("OPTIONS", "/cameras/default/whep"), ("DELETE", "/cameras/default/whep/x"),
          ("OPTIONS", "/cameras/default/whep/x"), ("GET", "/nothing-here")]


async def test_rebound_host_is_refused_everywhere(serve):
    url, app = await serve(width=320, height=240)
    root = base(url)
    async with aiohttp.ClientSession() as http:
        for method, path in ROUTES:
            async with http.request(method, root + path, headers=EVIL, data="v=0") as r:
                body = await r.text()
                assert r.status == 421, (method, path, r.status)
                assert "--allow-host evil.example" in body and body.count("\n") == 1
                assert "Access-Control-Allow-Origin" not in r.headers
        # the websocket does not upgrade, with or without a same-origin Origin
        for origin in (None, "http://evil.example"):
            headers = {**EVIL, **({"Origin": origin} if origin else {})}
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with http.ws_connect(url, headers=headers):
                    pass
            assert refused.value.status == 421
        # a port, a final dot or capitals change nothing
        for host in ("evil.example:8080", "EVIL.example.", "127.0.0.1.evil.example", "localhost.evil.example"):
            async with http.get(root + "/healthz", headers={"Host": host}) as r:
                assert r.status == 421, host
    assert not any(c.stream.runs for c in app[CAMERAS])  # no camera was opened for any of them


async def test_own_names_are_accepted(serve):
    url, _ = await serve(width=320, height=240)
    root = base(url)
    port = root.rsplit(":", 1)[1]
    hostname = socket.gethostname()
    hosts = [f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "LocalHost", "[::1]:8080", "127.0.0.2",
             hostname, f"{hostname.split('.')[0]}.local:{port}"]
    async with aiohttp.ClientSession() as http:
        for host in hosts:
            async with http.get(root + "/healthz", headers={"Host": host}) as r:
                assert r.status == 200, host
        async with http.ws_connect(url, headers={"Host": f"localhost:{port}"}) as ws:
            assert (await ws.receive_json(timeout=10))["type"] == "hello"
        # the plain client (its Host is 127.0.0.1:PORT) gets everything
        for path in ("/", "/api/cameras", "/metrics", "/static/app.js"):
            async with http.get(root + path) as r:
                assert r.status == 200, path


def test_machine_addresses_are_accepted():
    check = HostCheck("0.0.0.0")
    addresses = check.addresses()
    assert "127.0.0.1" in addresses
    for address in addresses:
        shown = f"[{address}]:80" if ":" in address else f"{address}:80"
        assert check.allows(shown), shown
    assert not check.allows("192.0.2.254") or "192.0.2.254" in addresses
    assert check.allows(None)  # no Host at all: HTTP/1.0, not a browser
    assert HostCheck("198.51.100.1").allows("198.51.100.1:8080")  # the --host address (the browser tests')
    assert HostCheck("0.0.0.0", ["*"]).allows("evil.example")
    assert HostCheck("0.0.0.0", ["*.home.arpa"]).allows("cam.home.arpa")
    assert not HostCheck("0.0.0.0", ["*.home.arpa"]).allows("home.arpa.evil.example")
    assert host_name("[fe80::1%25eth0]:8080") == "fe80::1"


async def test_allow_host_adds_a_name(serve):
    url, _ = await serve(width=320, height=240, allow_hosts=["cam.example", "*.home.arpa"])
    root = base(url)
    async with aiohttp.ClientSession() as http:
        for host, status in [("cam.example:8080", 200), ("Cam.Example", 200), ("front.home.arpa", 200),
                             ("evil.example", 421), ("cam.example.evil.example", 421)]:
            async with http.get(root + "/api/cameras", headers={"Host": host}) as r:
                assert r.status == status, host
    url, _ = await serve(width=320, height=240, allow_hosts=["*"])
    async with aiohttp.ClientSession() as http:
        async with http.get(base(url) + "/api/cameras", headers=EVIL) as r:
            assert r.status == 200


async def test_whep_origin(serve):
    url, _ = await serve(width=320, height=240, allow_origins=["https://ok.example"])
    root = base(url)
    endpoint = root + "/whep"
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    async with aiohttp.ClientSession() as http:
        # an unlisted website: a clear 403, no CORS grant, nothing started
        for method, path in [("OPTIONS", "/whep"), ("POST", "/whep"), ("OPTIONS", "/cameras/default/whep"),
                             ("POST", "/cameras/default/whep"), ("DELETE", "/cameras/default/whep/x"),
                             ("OPTIONS", "/cameras/default/whep/x"), ("OPTIONS", "/cameras/nope/whep")]:
            async with http.request(method, root + path, data="v=0", headers={
                    "Origin": "https://evil.example", "Content-Type": "application/sdp", **preflight}) as r:
                assert r.status == 403, (method, path)
                assert "Access-Control-Allow-Origin" not in r.headers
                assert "--allow-origin https://evil.example" in await r.text()
        # the listed origin: its own origin echoed, on the preflight and the POST
        async with http.options(endpoint, headers={"Origin": "https://ok.example", **preflight}) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "https://ok.example"
            assert "Origin" in r.headers["Vary"]
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
        pc, sdp = await offer()
        try:
            async with http.post(endpoint, data=sdp, headers={"Origin": "https://ok.example",
                                                              "Content-Type": "application/sdp"}) as r:
                assert r.status == 201
                assert r.headers["Access-Control-Allow-Origin"] == "https://ok.example"
                assert "Location" in r.headers["Access-Control-Expose-Headers"]
                location = r.headers["Location"]
            async with http.delete(root + location, headers={"Origin": "https://evil.example"}) as r:
                assert r.status == 403  # another website cannot hang up a viewer either
            async with http.delete(root + location, headers={"Origin": "https://ok.example"}) as r:
                assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "https://ok.example"
        finally:
            await pc.close()
        # the server's own page (same origin), and a client without Origin: allowed
        host = root.removeprefix("http://")
        async with http.options(endpoint, headers={"Origin": root, **preflight}) as r:
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == root
        async with http.options(endpoint) as r:
            assert r.status == 204 and "Access-Control-Allow-Origin" not in r.headers
        async with http.options(endpoint, headers={"Origin": f"http://{host}.evil.example"}) as r:
            assert r.status == 403
    # "*" in the list: any origin
    url, _ = await serve(width=320, height=240, allow_origins=["*"])
    async with aiohttp.ClientSession() as http:
        async with http.options(base(url) + "/whep", headers={"Origin": "https://any.example", **preflight}) as r:
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "*"
