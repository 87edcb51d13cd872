"""The command line: parse options, check the source, build the app and run it."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import ssl

import ifaddr

from aiohttp import web

from .app import create_app
from .config import CODECS, ENCODERS, Config
from .ice import parse_ice_server, resolve_addresses
from .sources import SourceError, check_source, resolve_auto

logger = logging.getLogger("camtrack")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camtrack",
        description="Stream a camera to web browsers over WebRTC.",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all, 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    parser.add_argument(
        "--source", default="auto",
        help="camera index or /dev/videoN, a video file, a stream URL (rtsp://, http://), "
             "'pattern' for the built-in test pattern, or 'auto' (default): camera 0 if it opens, else pattern")
    parser.add_argument("--width", type=int, default=640, help="frame width (default: 640)")
    parser.add_argument("--height", type=int, default=480, help="frame height (default: 480)")
    parser.add_argument("--fps", type=float, default=30.0, help="frames per second (default: 30)")
    parser.add_argument("--codec", choices=CODECS, default="h264",
                        help="video codec sent to viewers (default: h264, constrained baseline)")
    parser.add_argument("--encoder", choices=ENCODERS, default="shared",
                        help="'shared' (default): each frame encoded once for every viewer; "
                             "'per-viewer': aiortc encodes for each viewer, with its own congestion control")
    parser.add_argument("--bitrate", type=int, default=1_000_000, metavar="BPS",
                        help="target bitrate of the shared encoder in bit/s (default: 1000000)")
    parser.add_argument("--keyframe-interval", type=float, default=2.0, metavar="SECONDS",
                        help="seconds between periodic keyframes of the shared encoder (default: 2)")
    parser.add_argument("--ice-server", action="append", default=[], metavar="URL",
                        help="STUN/TURN server, repeatable: stun:HOST:PORT or turn:USER:PASS@HOST:PORT "
                             "(default: none, host candidates only, for a LAN)")
    parser.add_argument("--ice-address", action="append", default=[], metavar="ADDR",
                        help="offer only this local IP address or interface as a host candidate, repeatable "
                             "(default: all the machine's addresses)")
    parser.add_argument("--max-viewers", type=int, default=0, metavar="N",
                        help="at most N viewers at once; the next gets 'server full' (default: 0, no limit)")
    parser.add_argument("--negotiation-timeout", type=float, default=15.0, metavar="SECONDS",
                        help="close a peer that has not connected within this time (default: 15)")
    parser.add_argument("--idle-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="close a websocket that has sent no offer within this time (default: 30)")
    parser.add_argument("--token", default=os.environ.get("CAMTRACK_TOKEN") or None,
                        help="require this token to watch (default: $CAMTRACK_TOKEN, else none); "
                             "the page takes it from its own URL, /?token=...")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="let pages from this origin (https://host:port) open the websocket, repeatable; "
                             "same-origin pages and non-browser clients are always allowed")
    parser.add_argument("--cert", help="TLS certificate file (PEM): serve HTTPS and WSS")
    parser.add_argument("--key", help="TLS private key file (PEM), with --cert")
    parser.add_argument("--linger", type=float, default=3.0,
                        help="seconds the source stays open after the last viewer leaves (default: 3)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log level (default: info)")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(
        host=args.host, port=args.port, source=args.source, width=args.width, height=args.height,
        fps=args.fps, codec=args.codec, encoder=args.encoder, bitrate=args.bitrate,
        keyframe_interval=args.keyframe_interval, ice_servers=args.ice_server, ice_addresses=args.ice_address,
        linger=args.linger, log_level=args.log_level, max_viewers=args.max_viewers,
        negotiation_timeout=args.negotiation_timeout, idle_timeout=args.idle_timeout, token=args.token,
        allow_origins=args.allow_origin, cert=args.cert, key=args.key,
    )


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aioice", "aiortc", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        config = config_from_args(args)
        for url in config.ice_servers:
            parse_ice_server(url)
        resolve_addresses(config.ice_addresses)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        config.source = resolve_auto(config.source)
        check_source(config.source, config.width, config.height, config.fps)
    except SourceError as exc:
        parser.exit(2, f"camtrack: error: {exc}\n")
    ssl_context = None
    if config.cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ssl_context.load_cert_chain(config.cert, config.key)
        except (OSError, ssl.SSLError) as exc:
            parser.exit(2, f"camtrack: error: cannot load TLS certificate/key: {exc}\n")
    logger.info("watch at %s", watch_url(config.host, config.port, tls=ssl_context is not None))
    try:
        web.run_app(create_app(config), host=config.host, port=config.port, print=None,
                    shutdown_timeout=3.0, access_log=None, ssl_context=ssl_context)
    except OSError as exc:
        parser.exit(1, f"camtrack: error: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}\n")


def watch_url(host: str, port: int, tls: bool = False) -> str:
    """The address a person should open in a browser."""
    if host in ("0.0.0.0", "::", ""):
        addresses = [ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips
                     if isinstance(ip.ip, str) and not ip.ip.startswith("127.")]
        host = addresses[0] if addresses else socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}/"
