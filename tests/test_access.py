"""Who may watch: the token, the Origin check, TLS, and the warning when the server is open."""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from camtrack.client import Viewer

ROOT = Path(__file__).resolve().parent.parent


async def handshake_status(url: str, **kwargs) -> int:
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, **kwargs) as ws:
                await ws.close()
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def test_token(serve):
    url, app = await serve(width=320, height=240, token="s3cret")
    # wrong token in the URL: refused before the upgrade
    assert await handshake_status(url + "?token=nope") == 401
    async with aiohttp.ClientSession() as session:
        # no token in the URL: nothing is said until a right "auth" message
        async with session.ws_connect(url) as ws:
            await ws.send_json({"type": "offer", "sdp": "v=0"})
            reply = await ws.receive_json(timeout=10)
            assert reply["type"] == "error" and reply["message"].startswith("unauthorized")
            closing = await ws.receive(timeout=10)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4401
        async with session.ws_connect(url) as ws:
            await ws.send_json({"type": "auth", "token": "wrong"})
            assert (await ws.receive_json(timeout=10))["message"].startswith("unauthorized")
        async with session.ws_connect(url) as ws:
            await ws.send_json({"type": "auth", "token": "\ud800"})  # not even encodable
            assert (await ws.receive_json(timeout=10))["message"].startswith("unauthorized")
        async with session.get(url.replace("/ws", "/snapshot.jpg"), headers={"Authorization": "Bearer \xff\xfe"}) as r:
            assert r.status == 401
        async with session.ws_connect(url) as ws:
            await ws.send_json({"type": "auth", "token": "s3cret"})
            assert (await ws.receive_json(timeout=10))["type"] == "hello"
    # a whole viewer with the token in the URL
    viewer = Viewer(url + "?token=s3cret")
    await viewer.connect()
    await viewer.frames(3)
    await viewer.close()


async def test_origin(serve):
    url, _ = await serve(width=320, height=240, allow_origins=["https://ok.example"])
    host = url.split("/")[2]
    assert await handshake_status(url, origin="http://evil.example") == 403
    assert await handshake_status(url, origin=f"http://{host}") == 101  # same origin
    assert await handshake_status(url, origin="https://ok.example") == 101  # listed
    assert await handshake_status(url) == 101  # no Origin: not a browser


async def test_open_server_warns(serve, caplog):
    caplog.set_level(logging.WARNING, logger="camtrack.app")
    await serve(host="0.0.0.0")  # the fixture still listens on 127.0.0.1 only
    assert any("anyone who can reach 0.0.0.0" in r.message for r in caplog.records)
    caplog.clear()
    await serve(host="0.0.0.0", token="x")
    await serve(host="127.0.0.1")
    assert not any("anyone" in r.message for r in caplog.records)


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls(tmp_path, loopback_ice):
    cert, key = self_signed(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py"), "--host", "127.0.0.1", "--port", str(port), "--source", "pattern",
         "--width", "320", "--height", "240", "--cert", str(cert), "--key", str(key), "--ice-address", "127.0.0.1",
         "--webrtc-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    context = ssl.create_default_context(cafile=str(cert))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with session.get(f"https://127.0.0.1:{port}/") as response:
                        assert response.status == 200
                        assert "<video" in await response.text()
                    break
                except aiohttp.ClientConnectorError:
                    assert time.monotonic() < deadline and server.poll() is None, "server did not start"
                    await asyncio.sleep(0.1)
            viewer = Viewer(f"wss://127.0.0.1:{port}/ws", session)
            await viewer.connect()
            await viewer.frames(3)
            await viewer.close()
    finally:
        server.terminate()
        output = server.communicate(timeout=10)[0]
    assert f"watch at https://127.0.0.1:{port}/" in output


def test_tls_needs_both_files(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "server.py"), "--cert", str(tmp_path / "c.pem")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "both --cert and --key" in result.stderr
