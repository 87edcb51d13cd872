"""A Janus server for tests: HTTP transport and the VideoRoom plugin only, on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

LIBDIR = next((p for p in Path("/usr/lib").glob("*/janus") if (p / "plugins").is_dir()), Path("/usr/lib/janus"))
ROOM = 1234


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Janus:
    """`janus -F <config dir>` with a config written here."""

    def __init__(self, workdir: Path, codec: str = "h264") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/janus"
        self.process: subprocess.Popen | None = None
        config = workdir / "config"
        config.mkdir(parents=True, exist_ok=True)
        # only the two modules the test needs: links to them in folders of our own
        for kind, name in (("plugins", "libjanus_videoroom.so"), ("transports", "libjanus_http.so")):
            folder = workdir / kind
            folder.mkdir(exist_ok=True)
            link = folder / name
            if not link.exists():
                link.symlink_to(LIBDIR / kind / name)
        for kind in ("events", "loggers"):
            (workdir / kind).mkdir(exist_ok=True)
        (config / "janus.jcfg").write_text(f"""
general: {{
    configs_folder = "{config}"
    plugins_folder = "{workdir / 'plugins'}"
    transports_folder = "{workdir / 'transports'}"
    events_folder = "{workdir / 'events'}"
    loggers_folder = "{workdir / 'loggers'}"
    log_to_stdout = true
    debug_level = 4
    session_timeout = 60
}}
media: {{
    rtp_port_range = "20000-40000"
}}
nat: {{
    ice_enforce_list = "lo"
    nice_debug = false
}}
events: {{ broadcast = false }}
""")
        profile = '\n    h264_profile = "42e01f"' if codec == "h264" else ""
        (config / "janus.plugin.videoroom.jcfg").write_text(f"""
general: {{ }}
room-{ROOM}: {{
    description = "camtrack test room"
    publishers = 6
    bitrate = 2000000
    fir_freq = 10
    videocodec = "{codec}"{profile}
    audiocodec = "opus"
}}
""")
        (config / "janus.transport.http.jcfg").write_text(f"""
general: {{
    json = "compact"
    base_path = "/janus"
    http = true
    port = {self.port}
    ip = "127.0.0.1"
    https = false
}}
admin: {{ admin_http = false }}
""")

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.workdir / "janus.log", "ab")
        self.process = subprocess.Popen(["janus", "-F", str(self.workdir / "config")], stdout=log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/info", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"janus did not start:\n{self.log()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        path = self.workdir / "janus.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""


def available() -> bool:
    return shutil.which("janus") is not None and (LIBDIR / "plugins" / "libjanus_videoroom.so").exists()
