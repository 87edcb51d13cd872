"""A private network namespace for browser tests: loopback plus a veth pair, nothing else.

Chromium and the server under test run inside it, so no packet (mDNS, STUN, anything)
reaches the host's network. Needs root and iproute2.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass

SERVER_ADDRESS = "198.51.100.1"  # TEST-NET-2
BROWSER_ADDRESS = "198.51.100.2"


class NetnsUnavailable(RuntimeError):
    """This machine cannot make a network namespace (not root, no iproute2, no permission)."""


@dataclass
class Netns:
    name: str

    def command(self, *argv: str) -> list[str]:
        """`argv` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def kill_all(self) -> None:
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def delete(self) -> None:
        self.kill_all()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def no_ipv6(namespace: str, link: str) -> list[str]:
    """The step that keeps IPv6 off `link` (before it is up): a veth's link-local address is
    "tentative" for 1-3 s and then valid, and each change is a network change to Chromium, which
    cancels the page load in flight (ERR_NETWORK_CHANGED, seen in CI on a module's first browser
    test). The tests use IPv4 only. (iproute2 alone: no sysctl, no writable /proc/sys needed.)"""
    return ["ip", "-n", namespace, "link", "set", link, "addrgenmode", "none"]


def create(name: str) -> Netns:
    """Make namespace `name` with lo up and a veth pair SERVER_ADDRESS <-> BROWSER_ADDRESS."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise NetnsUnavailable("browser tests need root and iproute2 to make a network namespace")
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "-n", name, "link", "set", "lo", "up"],
        ["ip", "-n", name, "link", "add", "ct0", "type", "veth", "peer", "name", "ct1"],
        ["ip", "-n", name, "addr", "add", f"{SERVER_ADDRESS}/24", "dev", "ct0"],
        ["ip", "-n", name, "addr", "add", f"{BROWSER_ADDRESS}/24", "dev", "ct1"],
        no_ipv6(name, "ct0"),
        no_ipv6(name, "ct1"),
        ["ip", "-n", name, "link", "set", "ct0", "up"],
        ["ip", "-n", name, "link", "set", "ct1", "up"],
    ]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True)
        if result.returncode != 0:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            raise NetnsUnavailable(f"{' '.join(step)} failed: {result.stderr.strip()}")
    return Netns(name)
