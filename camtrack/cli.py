"""The command line: parse options, check the source, build the app and run it."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import ssl
import tomllib

import ifaddr

from aiohttp import web

from .app import create_app
from .config import CODECS, ENCODERS, Config
from .outputs.webrtc.ice import parse_ice_server, resolve_addresses
from .sources import SourceError, check_source, redact, resolve_auto

logger = logging.getLogger("camtrack")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camtrack",
        description="Stream a camera to web browsers over WebRTC.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help="read options from this TOML file: any option below as a top-level key "
                             "(ice-server = [\"stun:...\"] for repeatable ones), and cameras as "
                             "[cameras.NAME] tables with source, width, height, fps, codec, bitrate, "
                             "keyframe-interval, max-viewers; the command line wins")
    parser.add_argument("--camera", action="append", default=[], metavar="NAME=SOURCE",
                        help="a named camera, repeatable (URLs /cameras/NAME/..., /ws?camera=NAME); "
                             "without any, one camera named 'default' from --source")
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
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="also answer requests for this host name (the Host header), repeatable; the machine's "
                             "own names and addresses always work; '*' for any (no DNS-rebinding protection)")
    parser.add_argument("--cert", help="TLS certificate file (PEM): serve HTTPS and WSS")
    parser.add_argument("--key", help="TLS private key file (PEM), with --cert")
    parser.add_argument("--mjpeg-fps", type=float, default=15.0, metavar="FPS",
                        help="most frames a second an MJPEG client gets (default: 15; a client may ask "
                             "for fewer with ?fps=)")
    parser.add_argument("--jpeg-quality", type=int, default=80, metavar="Q",
                        help="JPEG quality of MJPEG and snapshots, 1-100 (default: 80; ?quality= per request)")
    parser.add_argument("--publish", metavar="janus:URL",
                        help="also publish every camera to a Janus VideoRoom, e.g. janus:http://HOST:8088/janus "
                             "(the shared encoder's packets, one upstream stream; retried until it works)")
    parser.add_argument("--janus-room", type=int, metavar="N", help="the VideoRoom to publish in (with --publish)")
    parser.add_argument("--janus-pin", metavar="PIN", help="the room's pin, if it has one")
    parser.add_argument("--janus-display", metavar="NAME",
                        help="the publisher's display name in the room (default: the camera's name)")
    parser.add_argument("--linger", type=float, default=3.0,
                        help="seconds the source stays open after the last viewer leaves (default: 3)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log level (default: info)")
    return parser


#: keys a [cameras.NAME] table of the config file may have
CAMERA_KEYS = {"source", "width", "height", "fps", "codec", "bitrate", "keyframe_interval", "max_viewers",
               "publish", "janus_room", "janus_pin", "janus_display"}
#: options that only make sense on the command line
NOT_IN_FILE = {"config", "camera", "help"}


def read_config_file(path: str, parser: argparse.ArgumentParser) -> tuple[dict, dict[str, dict]]:
    """The options and the [cameras.NAME] tables of a TOML config file."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        parser.exit(2, f"camtrack: error: cannot read config file {path}: {exc.strerror or exc}\n")
    except tomllib.TOMLDecodeError as exc:
        parser.exit(2, f"camtrack: error: config file {path}: {exc}\n")
    known = {action.dest for action in parser._actions} - NOT_IN_FILE
    cameras = data.pop("cameras", {})
    options = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in known:
            parser.exit(2, f"camtrack: error: config file {path}: unknown option {key!r}\n")
        options[dest] = value
    if not isinstance(cameras, dict) or not all(isinstance(t, dict) for t in cameras.values()):
        parser.exit(2, f"camtrack: error: config file {path}: cameras must be [cameras.NAME] tables\n")
    for name, table in cameras.items():
        table = {k.replace("-", "_"): v for k, v in table.items()}
        unknown = set(table) - CAMERA_KEYS
        if unknown or "source" not in table:
            problem = f"unknown key {sorted(unknown)[0]!r}" if unknown else "needs a source"
            parser.exit(2, f"camtrack: error: config file {path}: camera {name!r} {problem}\n")
        cameras[name] = table
    return options, cameras


def parse(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace, dict[str, dict]]:
    """Command line over config file over defaults; returns the cameras too."""
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    cameras: dict[str, dict] = {}
    if known.config:
        options, cameras = read_config_file(known.config, parser)
        parser.set_defaults(**options)
    args = parser.parse_args(argv)
    if known.config:
        # a repeatable option given on the command line replaces the file's list, not extends it
        given = build_parser().parse_args(argv)
        for action in parser._actions:
            if isinstance(action, argparse._AppendAction) and getattr(given, action.dest):
                setattr(args, action.dest, getattr(given, action.dest))
    for item in args.camera:
        name, sep, source = item.partition("=")
        if not sep or not source:
            parser.error(f"--camera takes NAME=SOURCE, not {item!r}")
        cameras[name] = {**cameras.get(name, {}), "source": source}
    return parser, args, cameras


def config_from_args(args: argparse.Namespace, cameras: dict[str, dict] | None = None) -> Config:
    config = Config(
        host=args.host, port=args.port, source=args.source, width=args.width, height=args.height,
        fps=args.fps, codec=args.codec, encoder=args.encoder, bitrate=args.bitrate,
        keyframe_interval=args.keyframe_interval, ice_servers=list(args.ice_server),
        ice_addresses=list(args.ice_address), linger=args.linger, log_level=args.log_level,
        max_viewers=args.max_viewers, negotiation_timeout=args.negotiation_timeout,
        idle_timeout=args.idle_timeout, token=args.token, allow_origins=list(args.allow_origin),
        allow_hosts=list(args.allow_host),
        cert=args.cert, key=args.key, mjpeg_fps=args.mjpeg_fps, jpeg_quality=args.jpeg_quality,
        publish=args.publish, janus_room=args.janus_room, janus_pin=args.janus_pin,
        janus_display=args.janus_display,
    )
    if cameras:
        config = dataclasses.replace(config, cameras=[
            config.camera(name, **settings) for name, settings in cameras.items()])
    return config


def main(argv: list[str] | None = None) -> None:
    parser, args, cameras = parse(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aioice", "aiortc", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        config = config_from_args(args, cameras)
        for url in config.ice_servers:
            parse_ice_server(url)
        resolve_addresses(config.ice_addresses)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    for camera in config.cameras:
        try:
            camera.source = resolve_auto(camera.source)
            check_source(camera.source, camera.width, camera.height, camera.fps)
        except SourceError as exc:
            name = f"camera {camera.name}: " if len(config.cameras) > 1 else ""
            parser.exit(2, f"camtrack: error: {name}{exc}\n")
    ssl_context = None
    if config.cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ssl_context.load_cert_chain(config.cert, config.key)
        except (OSError, ssl.SSLError) as exc:
            parser.exit(2, f"camtrack: error: cannot load TLS certificate/key: {exc}\n")
    url = watch_url(config.host, config.port, tls=ssl_context is not None)
    for camera in config.cameras:
        logger.info("camera %s: %s, %dx%d@%g %s", camera.name, redact(camera.source), camera.width, camera.height,
                    camera.fps, camera.codec)
    logger.info("watch at %s", url)
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
