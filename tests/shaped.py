"""A shaped link for quality tests and benchmarks: camtrack in a network namespace of its own, and
viewers in two others, each joined to the server's by a veth pair; `tc tbf` on the server's end of
one pair narrows what that viewer receives (WEBRTC-HERE.md: tbf works here, netem does not).

    server ns (SERVER_A, SERVER_B) ──qa0/qa1── viewer ns a (VIEWER_A)    (shapeable)
                                   ──qb0/qb1── viewer ns b (VIEWER_B)

Nothing leaves the machine: the namespaces hold only these pairs and their loopback. Needs root and
iproute2. `ShapedServer` is a `CamtrackProcess` (tests/honest.py) inside the server's namespace:
its HTTP requests from this process go in through a thread that enters that namespace.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import subprocess
import threading
from collections.abc import Callable
from typing import TypeVar

from tests.honest import CamtrackProcess, HonestViewer
from tests.netns import Netns, NetnsUnavailable, no_ipv6

SERVER_A, VIEWER_A = "198.51.100.1", "198.51.100.2"
SERVER_B, VIEWER_B = "198.51.100.5", "198.51.100.6"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def _run(*argv: str) -> None:
    result = subprocess.run(list(argv), capture_output=True, text=True)
    if result.returncode != 0:
        raise NetnsUnavailable(f"{' '.join(argv)} failed: {result.stderr.strip()}")


class ShapedNet:
    """The three namespaces (named from `prefix` and this process's id) and their two veth pairs."""

    def __init__(self, prefix: str = "ctq") -> None:
        if os.geteuid() != 0:
            raise NetnsUnavailable("shaped links need root and iproute2")
        tag = f"{prefix}{os.getpid()}"
        self.server, self.a, self.b = Netns(f"{tag}s"), Netns(f"{tag}a"), Netns(f"{tag}b")
        self.delete()
        try:
            for ns in (self.server, self.a, self.b):
                _run("ip", "netns", "add", ns.name)
                _run("ip", "-n", ns.name, "link", "set", "lo", "up")
            for side, viewer_ns, server_ip, viewer_ip in (("a", self.a, SERVER_A, VIEWER_A),
                                                          ("b", self.b, SERVER_B, VIEWER_B)):
                here, there = f"q{side}0", f"q{side}1"
                _run("ip", "-n", self.server.name, "link", "add", here, "type", "veth", "peer", "name", there,
                     "netns", viewer_ns.name)
                _run("ip", "-n", self.server.name, "addr", "add", f"{server_ip}/30", "dev", here)
                _run("ip", "-n", viewer_ns.name, "addr", "add", f"{viewer_ip}/30", "dev", there)
                _run(*no_ipv6(self.server.name, here))
                _run(*no_ipv6(viewer_ns.name, there))
                _run("ip", "-n", self.server.name, "link", "set", here, "up")
                _run("ip", "-n", viewer_ns.name, "link", "set", there, "up")
        except NetnsUnavailable:
            self.delete()
            raise

    def shape(self, kbit: int) -> None:
        """Narrow what viewer a receives to `kbit` kbit/s (a token bucket on the server's end)."""
        _run("ip", "netns", "exec", self.server.name, "tc", "qdisc", "replace", "dev", "qa0", "root", "tbf",
             "rate", f"{kbit}kbit", "burst", "16kbit", "latency", "300ms")

    def unshape(self) -> None:
        subprocess.run(["ip", "netns", "exec", self.server.name, "tc", "qdisc", "del", "dev", "qa0", "root"],
                       capture_output=True)

    def delete(self) -> None:
        for ns in (self.server, self.a, self.b):
            ns.delete()


def in_netns(name: str, call: Callable[[], T]) -> T:
    """`call()` on a thread of its own that entered network namespace `name` (its sockets live there)."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            result.append(call())
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


class ShapedServer(CamtrackProcess):
    """camtrack in `net`'s server namespace, listening on both of its addresses (ICE on them too)."""

    def __init__(self, net: ShapedNet, *args: str) -> None:
        super().__init__(*args, "--host", "0.0.0.0", "--ice-address", SERVER_A, "--ice-address", SERVER_B)
        self.net = net
        self.prefix = net.server.command()
        # the HTTP port is the server namespace's own: any free number will do there
        self.address = "127.0.0.1"

    async def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        fetch = super()._fetch(path, timeout)
        return await asyncio.to_thread(in_netns, self.net.server.name, fetch)

    def ws_for(self, side: str, camera: str | None = None) -> str:
        """The /ws URL viewer `side` ("a" or "b") reaches the server at."""
        host = SERVER_A if side == "a" else SERVER_B
        return f"ws://{host}:{self.port}/ws" + (f"?camera={camera}" if camera else "")


def shaped_viewer(net: ShapedNet, side: str, url: str, stamp_width: int = 640) -> HonestViewer:
    """An honest viewer (tests/honest_viewer.py) in viewer namespace `side`, offering its own address,
    reading stamps drawn at `stamp_width` (the camera's width) whatever the size it gets."""
    ns = net.a if side == "a" else net.b
    return HonestViewer(url, prefix=ns.command(), address=VIEWER_A if side == "a" else VIEWER_B,
                        stamp_width=stamp_width)
