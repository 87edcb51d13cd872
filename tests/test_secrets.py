"""Secrets never leave: credentials in source and Janus URLs are redacted in every endpoint and log line."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from camtrack import Config
from camtrack.app import CAMERAS, CONFIG
from camtrack.config import CameraConfig
from camtrack.outputs.janus import JanusPublisher
from camtrack.redaction import (
    SecretFilter,
    config_secrets,
    install_log_redaction,
    scrub,
)
from camtrack.sources import redact, url_secrets

from .conftest import eventually
from .test_whep import base

#: one per place a credential can come from
SECRETS = ["secret1", "secret2", "secret3", "secret4pin", "secret5tok", "secret6turn", "secret7", "sec%40ret8"]
SOURCE = "rtsp://u:secret1@127.0.0.1:9/s?user=u&password=secret2&Channel=1"  # nothing listens at port 9


def test_redact():
    assert redact(SOURCE) == "rtsp://***@127.0.0.1:9/s?user=***&password=***&Channel=1"
    assert url_secrets(SOURCE) == ["u", "secret1", "u", "secret2"]
    for name in ("user", "username", "password", "pass", "pwd", "token", "key", "secret", "auth", "apikey",
                 "signature", "PassWord", "access_token", "api_key", "X-Amz-Signature", "X-Amz-Credential"):
        assert redact(f"http://cam/x.mjpg?{name}=v1&fps=5#f") == f"http://cam/x.mjpg?{name}=***&fps=5#f", name
    assert redact("http://cam/x.mjpg?fps=5&resolution=640x480") == "http://cam/x.mjpg?fps=5&resolution=640x480"
    assert redact("http://a:b@c@cam:81?token=t") == "http://***@cam:81?token=***"
    for spec in ("pattern", "0", "/dev/video2", "clip.mp4", "/videos/a@b.mp4"):
        assert redact(spec) == spec and url_secrets(spec) == []


def test_filter_scrubs_messages_and_tracebacks():
    config = Config(source="http://cam/v.mjpg?apikey=secret2", token="secret5tok",
                    ice_servers=["turn:tu:secret6turn@192.0.2.1:3478"],
                    cameras=[CameraConfig("a", "rtsp://u:sec%40ret8@cam/s", publish="janus:http://ju:secret3@j/janus",
                                          janus_room=1, janus_pin="secret4pin")])
    known = config_secrets(config)
    assert {"secret2", "secret5tok", "secret6turn", "sec%40ret8", "sec@ret8", "secret3", "secret4pin"} <= known
    record_filter = SecretFilter(known)
    logger = logging.getLogger("test_secrets")
    try:
        raise ValueError("could not open rtsp://u:sec@ret8@cam/s with secret4pin")
    except ValueError as exc:
        record = logger.makeRecord("x", logging.ERROR, __file__, 1, "failed %s (%r) token=%s", (
            "http://x:y@cam/?password=zz", exc, "secret5tok"), (type(exc), exc, exc.__traceback__))
    assert record_filter.filter(record)
    text = logging.Formatter().format(record)
    assert "failed http://***@cam/?password=*** (" in text and "token=***" in text
    for secret in ("sec@ret8", "secret4pin", "secret5tok", ":y@", "zz"):
        assert secret not in text
    assert "ValueError" in text and "Traceback" in text
    assert scrub("u went to cam", {"u"}) == "u went to cam"  # too short to hunt in free text


@pytest.fixture
async def failing_janus() -> AsyncIterator[int]:
    """A Janus that answers every request with HTTP 500; yields its port."""
    app = web.Application()

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=500, text="no")

    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield site._server.sockets[0].getsockname()[1]
    await runner.cleanup()


async def test_secrets_stay_out_of_endpoints_and_logs(serve, failing_janus, caplog):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="aiohttp.access")  # the request line, query and all
    settings = {
        "width": 320, "height": 240, "token": "secret5tok", "ice_servers": ["turn:tu:secret6turn@192.0.2.1:3478"],
        "cameras": [
            CameraConfig("front", SOURCE, width=320, height=240, janus_room=1, janus_pin="secret4pin",
                         publish=f"janus:http://ju:secret3@127.0.0.1:{failing_janus}/janus"),
            CameraConfig("back", "http://127.0.0.1:9/v.mjpg?token=sec%40ret8", width=320, height=240)]}
    installed = install_log_redaction(Config(**settings))  # as cli.main does, before anything runs
    try:
        url, app = await serve(**settings)
        assert config_secrets(app[CONFIG]) <= installed.secrets
        front, back = app[CAMERAS].get("front"), app[CAMERAS].get("back")
        # a publisher whose URL aiohttp refuses, printing it: the server does not know this one's secret
        back.publisher = JanusPublisher(back, "http://jv:secret7@127.0.0.1:99999/janus", 1, retry_min=0.05)
        back.publisher.start()
        root = base(url)
        async with aiohttp.ClientSession() as http:
            # watching opens the sources, which fail (logged); the token rides in a query (access log)
            for name in ("front", "back"):
                async with http.get(f"{root}/cameras/{name}/snapshot.jpg?token=secret5tok") as r:
                    assert r.status in (200, 503)
            await eventually(lambda: front.stream.state == "retrying" and back.stream.state == "retrying")
            await eventually(lambda: front.publisher.failures and back.publisher.failures)
            bodies = {}
            for path in ("/api/cameras", "/healthz", "/metrics"):
                async with http.get(root + path) as r:
                    bodies[path] = await r.text()
        logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
        assert "rtsp://***@127.0.0.1:9/s?user=***&password=***&Channel=1" in bodies["/api/cameras"]
        assert "http://***@127.0.0.1:" in bodies["/healthz"] and "HTTP 500 from" in bodies["/healthz"]
        assert "InvalidUrlClientError" in bodies["/healthz"]
        assert "rtsp://***@127.0.0.1:9" in logged and "HTTP 500 from http://***@127.0.0.1" in logged
        assert "/cameras/front/snapshot.jpg?token=***" in logged
        for secret in SECRETS + ["sec@ret8"]:
            for where, text in [*bodies.items(), ("log", logged)]:
                assert secret not in text, f"{secret} in {where}"
        # a library's log line with a credential in it (aiohttp prints URLs)
        logging.getLogger("aiohttp.client").error("GET %s: %s", SOURCE, "bad secret3")
        assert caplog.records[-1].getMessage() == "GET rtsp://***@127.0.0.1:9/s?user=***&password=***&Channel=1: bad ***"
    finally:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(installed)
