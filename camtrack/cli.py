"""The command line: parse options, check the source, build the app and run it."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import functools
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
from pathlib import Path
from typing import Any, NoReturn

import ifaddr
from aiohttp import web

from . import connections
from .app import CONFIG, create_app
from .config import CameraConfig, Config, Setting, settings, text, typed
from .outputs.webrtc.ice import parse_ice_server, resolve_addresses
from .outputs.webrtc.udpmux import PortTaken
from .plan import CameraPlan, plan_camera
from .processing import FunctionFile, LoadError
from .redaction import install_log_redaction
from .sources import SourceError, check_source, redact
from .workers.pool import WorkerFailed

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
    """The command line: --config, --camera and --help, then one flag per declared option (camtrack.config)."""
    parser = Parser(
        prog="camtrack",
        description="Stream a camera to web browsers over WebRTC.",
    )
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    parser.add_argument("--camera", action="append", default=[], metavar="NAME=SOURCE", help=CAMERA_HELP)
    cameras = parser.add_argument_group(
        "camera options", "every camera's, unless a [cameras.NAME] table of the config file sets one for that camera "
                          "(--max-viewers counts all cameras together; max-viewers in a table, that camera)")
    # the server's own first, as --help and its usage line list them
    for setting in sorted(OPTIONS, key=lambda setting: setting.per_camera):
        add_option(cameras if setting.per_camera else parser, setting)
    return parser


def add_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, setting: Setting) -> None:
    """The flag of one declared option, its type and default those of its settings field."""
    # (argparse reads % in a help text as a format: an option's help may show strftime codes)
    how: dict[str, Any] = {"help": setting.help.replace("%", "%%"), "metavar": setting.option.metavar,
                           "choices": setting.option.choices}
    default = setting.default
    if setting.option.env:
        default = os.environ.get(setting.option.env) or default
    if setting.repeatable:
        how.update(action="append", default=list(default))
    elif setting.kind is bool:
        how = {"help": how["help"], "action": "store_true", "default": default}
    else:
        # an `int | None` option is an int when given; a str one needs no conversion (type None)
        kind = next((k for k in (int, float) if setting.kind in (k, k | None)), None)
        how.update(type=kind, default=default)
    parser.add_argument(setting.flag, **how)


#: the declared options that the command line and the config file have, server-wide
OPTIONS = tuple(setting for setting in settings(Config) if setting.option.command_line)
#: those a [cameras.NAME] table of the config file may set too, by their config file key
CAMERA_OPTIONS = {setting.dest: setting for setting in OPTIONS if setting.per_camera}
#: the keys of a [cameras.NAME] table: its source, and the per-camera options
CAMERA_KEYS = ("source", *(dest.replace("_", "-") for dest in CAMERA_OPTIONS))
#: the command line's own flags, beside the declared options
CONFIG_HELP = ("read options from this TOML file: any option below as a top-level key "
               "(ice-server = [\"stun:...\"] for repeatable ones), and cameras as "
               f"[cameras.NAME] tables with {', '.join(CAMERA_KEYS)}; the command line wins")
CAMERA_HELP = ("a named camera, repeatable (URLs /cameras/NAME/..., /ws?camera=NAME); "
               "without any, one camera named 'default' from --source")


def read_config_file(path: str, parser: argparse.ArgumentParser) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
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
    # a key is an option's flag without "--", with "-" or "_" alike
    known = {setting.dest: setting for setting in OPTIONS}
    cameras = data.pop("cameras", {})
    options: dict[str, Any] = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in known:
            fail(parser, f"{where}: unknown option {key!r}")
        options[dest] = file_value(parser, where, known[dest], key, value)
    if not isinstance(cameras, dict) or not all(isinstance(t, dict) for t in cameras.values()):
        fail(parser, f"{where}: cameras must be [cameras.NAME] tables")
    tables: dict[str, dict[str, Any]] = {}
    for name, table in cameras.items():
        keys = {k.replace("-", "_"): (k, v) for k, v in table.items()}
        unknown = set(keys) - {"source", *CAMERA_OPTIONS}
        if unknown or "source" not in keys:
            problem = f"unknown key {keys[sorted(unknown)[0]][0]!r}" if unknown else "needs a source"
            fail(parser, f"{where}: camera {name!r} {problem}")
        # (by the settings' field names: a flag may differ from its field's, --mask from masks)
        tables[name] = {(CAMERA_OPTIONS[dest].name if dest in CAMERA_OPTIONS else dest):
                        file_value(parser, f"{where}: camera {name!r}", CAMERA_OPTIONS.get(dest), key, value)
                        for dest, (key, value) in keys.items()}
    return options, tables


def file_value(parser: argparse.ArgumentParser, where: str, setting: Setting | None, key: str, value: object) -> object:
    """`value` of `key` in a config file if it has the declared type of its option (`None`: a camera's source).

    argparse converts only strings, and a file gives any TOML type: `width = 640.0`, `codec = 5`,
    `token = 123456` or `fps = true` must be errors here, not tracebacks (or a 500) later. The
    message names the key as the file spells it; the range checks come later, from the settings objects.
    """
    try:
        if setting is None:
            return text(key, value)
        value = typed(key, value, setting.kind)
        choices = setting.option.choices
        if choices is not None and str(value).lower() not in choices:
            raise ValueError(f"{key} must be one of {', '.join(choices)}, not {value!r}")
        return value
    except ValueError as exc:
        fail(parser, f"{where}: {exc}")


def parse(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace, dict[str, dict[str, Any]]]:
    """Command line over config file over defaults; returns the cameras too."""
    parser = build_parser()
    pre = Parser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    cameras: dict[str, dict[str, Any]] = {}
    if known.config:
        options, cameras = read_config_file(known.config, parser)
        parser.set_defaults(**options)
    args = parser.parse_args(argv)
    if known.config:
        # a repeatable option given on the command line replaces the file's list, not extends it
        given = build_parser().parse_args(argv)
        for setting in OPTIONS:
            if setting.repeatable and getattr(given, setting.dest):
                setattr(args, setting.dest, getattr(given, setting.dest))
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


def config_from_args(args: argparse.Namespace, cameras: dict[str, dict[str, Any]] | None = None) -> Config:
    # a list is copied: the Config must not share it with the parser's defaults
    values: dict[str, Any] = {}
    for setting in OPTIONS:
        value = getattr(args, setting.dest)
        values[setting.name] = list(value) if setting.repeatable else value
    config = Config(**values)
    if cameras:
        config = dataclasses.replace(config, cameras=[
            config.camera(name, **table) for name, table in cameras.items()])
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


def prepare_camera(config: Config, camera: CameraConfig, plans: dict[str, CameraPlan] | None = None) -> str | None:
    """Settle a camera's source and mode (`auto` made real: its plan, kept in `plans` by camera
    name for create_app) and open it once; what is wrong, or None."""
    try:
        asked = camera.mode
        plan = plan_camera(camera, config, strict=True)
        camera.source, camera.mode = plan.source, plan.setting
        if plans is not None:
            plans[camera.name] = plan
        if not (asked == "auto" and camera.mode == "passthrough"):  # (else the probe just opened it)
            check_source(camera.source, camera.width, camera.height, camera.fps, camera.mode,
                         camera.rtsp_transport, camera.input_format)
    except (SourceError, ValueError, OSError) as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - OpenCV raises cv2.error for sources it cannot even try
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"cannot open source {redact(camera.source)!r}: {first}"
    return None


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
            parse_ice_server(url, turn_secret=config.turn_secret is not None)
        check_ice_addresses(config.ice_addresses)
    except (ValueError, TypeError) as exc:
        fail(parser, str(exc))
    install_log_redaction(config)  # before the first line that could show a source's password
    for camera in config.cameras:
        # the --process function loaded once, here: a file that does not import is one line and status 2
        if camera.process and camera.process_function is None:
            try:
                camera.process_function = FunctionFile(camera.process)
            except LoadError as exc:
                fail(parser, f"camera {camera.name}: {exc}" if len(config.cameras) > 1 else str(exc))
    # the TLS files first: reading them is instant, the cameras' checks may take seconds
    ssl_context = None
    if config.cert:
        ssl_context = load_tls(parser, config.cert, config.key)
    # every camera at once: a camera that does not answer must not hold up the others' checks
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(config.cameras))) as pool:
        plans: dict[str, CameraPlan] = {}
        problems = list(pool.map(functools.partial(prepare_camera, config, plans=plans), config.cameras))
    failed = [(camera, problem) for camera, problem in zip(config.cameras, problems, strict=True) if problem is not None]
    if failed:
        # one line for each camera that cannot be opened, each with its reason
        for camera, problem in failed:
            name = f"camera {camera.name}: " if len(config.cameras) > 1 else ""
            sys.stderr.write(f"camtrack: error: {one_line(name + problem)}\n")
        raise SystemExit(2)
    for camera in config.cameras:
        logger.info("camera %s: %s, %dx%d@%g %s", camera.name, redact(camera.source), camera.width, camera.height,
                    camera.fps, camera.codec)
    urls = watch_urls(config.host, config.port, tls=ssl_context is not None, base_path=config.base_path)
    try:
        asyncio.run(serve(create_app(config, plans), config.host, config.port, ssl_context, urls))
    except OSError as exc:
        where = "" if isinstance(exc, (PortTaken, WorkerFailed)) else f"cannot listen on {config.host}:{config.port}: "
        fail(parser, f"{where}{exc.strerror or exc}", status=1)


def load_tls(parser: argparse.ArgumentParser, cert: str, key: str | None) -> ssl.SSLContext:
    """The TLS context of --cert and --key; an error names the file that cannot be read."""
    for flag, path in (("--cert", cert), ("--key", key)):
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            fail(parser, f"cannot load TLS certificate/key: {flag} {path}: {why}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        fail(parser, f"cannot load TLS certificate/key (--cert {cert}, --key {key}): {exc}")
    return context


def make_runner(app: web.Application) -> web.AppRunner:
    """The runner that serves `app`, with a deadline and a cap on its connections."""
    # signals are serve()'s; once app.on_shutdown has told the viewers to go, a request handler still
    # running gets 0.5 s more before it is cancelled (aiohttp may wait that twice)
    return connections.make_runner(app, app[CONFIG], handle_signals=False, access_log=None, shutdown_timeout=0.5)


async def serve(app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None,
                urls: list[str] | None = None) -> None:
    """Serve `app` until SIGTERM or SIGINT, then stop within STOP_DEADLINE s; OSError if it cannot listen.

    `urls`, where to watch, are logged once everything listens (the app's start-up binds the WebRTC
    UDP port, then the HTTP port is bound): never before a port turns out to be taken.

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
    if urls:
        logger.info("watch at %s", urls[0] if len(urls) == 1 else ", ".join(urls))
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


#: interfaces whose addresses are listed last: containers' bridges, VPNs and virtual machines' networks
VIRTUAL_INTERFACES = ("docker", "br-", "veth", "virbr", "vboxnet", "vmnet", "tun", "tap", "wg", "zt", "tailscale",
                      "cni", "flannel", "cali", "lxc", "lxd", "podman")


def watch_urls(host: str, port: int, tls: bool = False, base_path: str = "/") -> list[str]:
    """Every address a person may open in a browser: --host, or, listening on every interface,
    each interface's address but loopback and link-local (physical interfaces first; each named when
    there are several, so a Docker bridge or a VPN is not taken for the LAN), or the host name; each
    under --base-path."""
    scheme = "https" if tls else "http"
    if host not in ("0.0.0.0", "::", ""):
        return [f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}{base_path}"]
    found: list[tuple[bool, int, str, str]] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                address = ipaddress.ip_address(ip.ip)
            elif host != "0.0.0.0":  # IPv6 only when listening on IPv6 too
                address = ipaddress.ip_address(ip.ip[0])
            else:
                continue
            if address.is_loopback or address.is_link_local or address.is_unspecified:
                continue
            shown = f"[{address}]" if address.version == 6 else str(address)
            name = adapter.nice_name or adapter.name
            virtual = name.lower().startswith(VIRTUAL_INTERFACES)
            found.append((virtual, address.version, f"{scheme}://{shown}:{port}{base_path}", name))
    if not found:
        return [f"{scheme}://{socket.gethostname()}:{port}{base_path}"]
    found.sort(key=lambda item: item[:2])  # physical interfaces first, IPv4 before IPv6 (a stable sort)
    unique = list(dict.fromkeys((url, name) for _, _, url, name in found))
    if len(unique) == 1:
        return [unique[0][0]]
    return [f"{url} ({name})" for url, name in unique]


#: where the options page is, beside the package in a checkout
OPTIONS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "options.md"
_TABLE_START = "<!-- the table below is made by camtrack.cli.options_table(); rewrite it with write_options_page() -->"
_TABLE_END = "<!-- end of the options table -->"


def options_table() -> str:
    """docs/options.md's table, made from each option's one declaration (camtrack/config.py) as the
    parser shows it; tests/test_options.py checks the page against it."""
    rows = ["| option | per camera | meaning |", "| --- | --- | --- |",
            f"| `--config FILE` |  | {CONFIG_HELP} |", f"| `--camera NAME=SOURCE` |  | {CAMERA_HELP} |"]
    for setting in sorted(OPTIONS, key=lambda setting: setting.per_camera):
        if setting.option.choices:
            shown = f"`{setting.flag} {{{','.join(map(str, setting.option.choices))}}}`"
        elif setting.kind is bool:
            shown = f"`{setting.flag}`"
        else:
            shown = f"`{setting.flag} {setting.option.metavar or setting.dest.upper()}`"
        meaning = setting.help.replace("|", "\\|")
        rows.append(f"| {shown} | {'yes' if setting.per_camera else ''} | {meaning} |")
    return "\n".join(rows) + "\n"


def write_options_page(page: Path = OPTIONS_PAGE) -> None:
    """Rewrite the table of docs/options.md from the declarations (after adding or changing an option)."""
    text = page.read_text()
    head, rest = text.split(_TABLE_START + "\n", 1)
    _, tail = rest.split(_TABLE_END, 1)
    page.write_text(head + _TABLE_START + "\n" + options_table() + _TABLE_END + tail)
