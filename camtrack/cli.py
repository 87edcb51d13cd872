"""The command line: parse options, check the source, build the app and run it."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import logging
import os
import signal
import socket
import ssl
import stat
import sys
import threading
import tomllib
from typing import NoReturn

import ifaddr
from aiohttp import web

from . import connections
from .app import CONFIG, create_app
from .config import CODECS, ENCODERS, Config, real, strings, text, whole
from .outputs.webrtc.ice import parse_ice_server, resolve_addresses
from .redaction import install_log_redaction
from .sources import SourceError, check_source, redact, resolve_auto

logger = logging.getLogger("camtrack")

#: a config file larger than this is a mistake (or /dev/zero), not a config
MAX_CONFIG_SIZE = 1 << 20
#: after the first SIGTERM/SIGINT: the graceful part (viewers told to go, requests let finish), after
#: which every connection left is aborted ...
STOP_GRACE = 3.0
#: ... and the moment the process is gone whatever still runs (the promise is 5 s)
STOP_DEADLINE = 4.5
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def one_line(message: str) -> str:
    """`message` with newlines and other control characters escaped: an error is one line on stderr."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message.strip())


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block): `camtrack: error: ...`, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def fail(parser: argparse.ArgumentParser, message: str, status: int = 2) -> NoReturn:
    """Exit with a one-line error: status 2 for a bad setting, 1 when the server cannot run."""
    parser.exit(status, f"camtrack: error: {one_line(message)}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    parser.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="close a connection that has not sent a request's headers (or a WHEP offer) "
                             "within this time, and idle keep-alive connections (default: 10)")
    parser.add_argument("--max-connections", type=int, default=0, metavar="N",
                        help="at most N HTTP connections at once (default: 0, half the open-file limit, at most "
                             "4096); at the cap a new one closes the one that waited longest without a request")
    parser.add_argument("--max-pending", type=int, default=64, metavar="N",
                        help="at most N sessions that are not viewers yet (default: 64); one more closes the "
                             "oldest of the client with the most")
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
    """The options and the [cameras.NAME] tables of a TOML config file, each of its option's type."""
    where = f"config file {path}"
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; only a regular file is read, and only so much
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                fail(parser, f"{where} is not a regular file")
            with open(fd, "rb", closefd=False) as file:
                raw = file.read(MAX_CONFIG_SIZE + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        fail(parser, f"cannot read {where}: {exc.strerror or exc}")
    except ValueError as exc:  # a NUL in the path
        fail(parser, f"cannot read {where}: {exc}")
    if len(raw) > MAX_CONFIG_SIZE:
        fail(parser, f"{where} is larger than {MAX_CONFIG_SIZE // 1024} KiB")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        fail(parser, f"{where} is not UTF-8 text (byte {exc.start})")
    except tomllib.TOMLDecodeError as exc:
        fail(parser, f"{where}: {exc}")
    except RecursionError:
        fail(parser, f"{where}: nested too deeply")
    actions = {action.dest: action for action in parser._actions if action.dest not in NOT_IN_FILE}
    cameras = data.pop("cameras", {})
    options = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in actions:
            fail(parser, f"{where}: unknown option {key!r}")
        options[dest] = file_value(parser, where, actions[dest], key, value)
    if not isinstance(cameras, dict) or not all(isinstance(t, dict) for t in cameras.values()):
        fail(parser, f"{where}: cameras must be [cameras.NAME] tables")
    for name, table in cameras.items():
        table = {k.replace("-", "_"): (k, v) for k, v in table.items()}
        unknown = set(table) - CAMERA_KEYS
        if unknown or "source" not in table:
            problem = f"unknown key {table[sorted(unknown)[0]][0]!r}" if unknown else "needs a source"
            fail(parser, f"{where}: camera {name!r} {problem}")
        cameras[name] = {dest: file_value(parser, f"{where}: camera {name!r}", actions[dest], key, value)
                         for dest, (key, value) in table.items()}
    return options, cameras


def file_value(parser: argparse.ArgumentParser, where: str, action: argparse.Action, key: str, value: object) -> object:
    """`value` of `key` in a config file if it has the type of its option's command-line value.

    argparse converts only strings, and a file gives any TOML type: `width = 640.0`, `codec = 5`,
    `token = 123456` or `fps = true` must be errors here, not tracebacks (or a 500) later.
    """
    try:
        if isinstance(action, argparse._AppendAction):
            return strings(key, value)
        if action.type is int:
            value = whole(key, value)
        elif action.type is float:
            value = real(key, value)
        else:
            value = text(key, value)
        if action.choices is not None and str(value).lower() not in action.choices:
            raise ValueError(f"{key} must be one of {', '.join(action.choices)}, not {value!r}")
        return value
    except ValueError as exc:
        fail(parser, f"{where}: {exc}")


def parse(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace, dict[str, dict]]:
    """Command line over config file over defaults; returns the cameras too."""
    parser = build_parser()
    pre = Parser(add_help=False)
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
    given_names: set[str] = set()
    for item in args.camera:
        name, sep, source = item.partition("=")
        if not sep or not source:
            parser.error(f"--camera takes NAME=SOURCE, not {item!r}")
        # the command line may give a file's camera another source, but naming one camera twice is a mistake
        if name in given_names:
            parser.error(f"--camera {name!r} is given twice")
        given_names.add(name)
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
        allow_hosts=list(args.allow_host), header_timeout=args.header_timeout,
        max_connections=args.max_connections, max_pending=args.max_pending,
        cert=args.cert, key=args.key, mjpeg_fps=args.mjpeg_fps, jpeg_quality=args.jpeg_quality,
        publish=args.publish, janus_room=args.janus_room, janus_pin=args.janus_pin,
        janus_display=args.janus_display,
    )
    if cameras:
        config = dataclasses.replace(config, cameras=[
            config.camera(name, **settings) for name, settings in cameras.items()])
    return config


def check_ice_addresses(names: list[str]) -> None:
    """Every --ice-address must be an address or an interface of this machine, with an address."""
    local = {ipaddress.ip_address(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
             for adapter in ifaddr.get_adapters() for ip in adapter.ips}
    for name in names:
        addresses = resolve_addresses([name])
        if not addresses:
            raise ValueError(f"--ice-address {name!r} is an interface without an IP address")
        for address in addresses:
            if ipaddress.ip_address(address.split("%")[0]) not in local:
                raise ValueError(f"--ice-address {name!r} is not an address of this machine")


def check_host(host: str) -> None:
    """--host must be an IP address or a name that resolves (whether it can be bound is known only then)."""
    if not host:
        return  # every interface, like 0.0.0.0
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError, ValueError) as exc:
        raise ValueError(f"--host {host!r} is not an IP address or a name that resolves ({exc})") from None


def main(argv: list[str] | None = None) -> None:
    try:
        run(argv)
    except KeyboardInterrupt:
        # Ctrl-C before the server runs (checking a slow source, say): no traceback
        sys.stderr.write("camtrack: interrupted\n")
        raise SystemExit(130) from None


def run(argv: list[str] | None) -> None:
    parser, args, cameras = parse(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aioice", "aiortc", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        config = config_from_args(args, cameras)
        # port 0 (any free port) is for tests that build a Config; a person must name the port
        if config.port == 0:
            raise ValueError("port must be between 1 and 65535, not 0")
        check_host(config.host)
        for url in config.ice_servers:
            parse_ice_server(url)
        check_ice_addresses(config.ice_addresses)
    except (ValueError, TypeError) as exc:
        fail(parser, str(exc))
    install_log_redaction(config)  # before the first line that could show a source's password
    for camera in config.cameras:
        try:
            camera.source = resolve_auto(camera.source)
            check_source(camera.source, camera.width, camera.height, camera.fps)
        except (SourceError, ValueError, OSError) as exc:
            name = f"camera {camera.name}: " if len(config.cameras) > 1 else ""
            fail(parser, f"{name}{exc}")
        except Exception as exc:  # noqa: BLE001 - OpenCV raises cv2.error for sources it cannot even try
            name = f"camera {camera.name}: " if len(config.cameras) > 1 else ""
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            fail(parser, f"{name}cannot open source {camera.source!r}: {first}")
    ssl_context = None
    if config.cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ssl_context.load_cert_chain(config.cert, config.key)
        except (OSError, ssl.SSLError, ValueError) as exc:
            fail(parser, f"cannot load TLS certificate/key: {exc}")
    url = watch_url(config.host, config.port, tls=ssl_context is not None)
    for camera in config.cameras:
        logger.info("camera %s: %s, %dx%d@%g %s", camera.name, redact(camera.source), camera.width, camera.height,
                    camera.fps, camera.codec)
    logger.info("watch at %s", url)
    try:
        asyncio.run(serve(create_app(config), config.host, config.port, ssl_context))
    except OSError as exc:
        fail(parser, f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", status=1)


def make_runner(app: web.Application) -> web.AppRunner:
    """The runner that serves `app`, with a deadline and a cap on its connections."""
    # signals are serve()'s; once app.on_shutdown has told the viewers to go, a request handler still
    # running gets 0.5 s more before it is cancelled (aiohttp may wait that twice)
    return connections.make_runner(app, app[CONFIG], handle_signals=False, access_log=None, shutdown_timeout=0.5)


async def serve(app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
    """Serve `app` until SIGTERM or SIGINT, then stop within STOP_DEADLINE s; OSError if it cannot listen.

    A second signal while stopping exits at once. The second handler and the deadline work outside
    the event loop (a plain signal handler, a thread), so a stuck loop cannot delay them.
    """
    loop = asyncio.get_running_loop()
    runner = make_runner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except BaseException:
        await runner.cleanup()
        raise
    stopping = asyncio.Event()

    def first_signal(signum: int) -> None:
        logger.info("%s: shutting down", signal.Signals(signum).name)
        for other in SIGNALS:
            loop.remove_signal_handler(other)
            signal.signal(other, second_signal)
        watchdog = threading.Timer(STOP_DEADLINE, too_slow)
        watchdog.daemon = True
        watchdog.start()
        stopping.set()

    for signum in SIGNALS:
        loop.add_signal_handler(signum, first_signal, signum)
    await stopping.wait()
    started = loop.time()
    for site in list(runner.sites):
        await site.stop()  # no new connections from here on
    connections = list(runner.server.connections) if runner.server is not None else []
    try:
        await asyncio.wait_for(runner.cleanup(), STOP_GRACE)
    except TimeoutError:
        logger.warning("still stopping after %g s: closing every connection left", STOP_GRACE)
    # a client that never reads keeps a closed transport waiting to flush forever: abort instead
    for handler in connections:
        if handler.transport is not None:
            handler.transport.abort()
    logger.info("stopped in %.2f s", loop.time() - started)


def second_signal(signum: int, frame: object) -> None:
    """A second SIGTERM/SIGINT while stopping: one line, and gone."""
    os.write(2, b"camtrack: second signal, exiting now\n")
    os._exit(128 + signum)


def too_slow() -> None:
    """Run by a thread STOP_DEADLINE s after the first signal if the process is still there."""
    os.write(2, f"camtrack: still stopping after {STOP_DEADLINE:g} s, exiting now\n".encode())
    os._exit(1)


def watch_url(host: str, port: int, tls: bool = False) -> str:
    """The address a person should open in a browser."""
    if host in ("0.0.0.0", "::", ""):
        addresses = [ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips
                     if isinstance(ip.ip, str) and not ip.ip.startswith("127.")]
        host = addresses[0] if addresses else socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}/"
