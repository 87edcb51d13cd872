"""camtrack in a process of its own that records one event for a test to kill mid-clip:
`python tests/record_process.py DIR [PORT] [-- CAMTRACK-OPTIONS as Config keywords in JSON]`.

It serves the test pattern with --record DIR on 127.0.0.1:PORT (0: a free one), starts an event
once the pre-roll holds 2 s, and prints one JSON line: {"clip": ID, "started": T, "port": P} (ID
null when recording is stopped);
then records until it is killed (the event never ends, unless the options say "end_after": SECONDS,
when it ends then and a line {"done": ID} says its clip is finished).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from camtrack import Config, create_app  # noqa: E402
from camtrack.app import RECORDINGS  # noqa: E402
from camtrack.connections import make_runner  # noqa: E402


async def main(directory: str, port: int, options: dict[str, object]) -> None:
    end_after = options.pop("end_after", None)
    settings: dict[str, object] = {
        "host": "127.0.0.1", "port": port, "source": "pattern", "record": directory, "webrtc_port": 0, "rtsp_port": 0,
        "keyframe_interval": 1.0, "pre_roll": 2.0, "record_min_free": 0.0, "ice_addresses": ["127.0.0.1"],
        # (admission from measured load off, as tests/honest.py's CamtrackProcess has it)
        "max_loop_lag": 0, "send_budget": 0, "max_picture_age": 0, "max_cpu": 0, **options}
    config = Config(**settings)  # type: ignore[arg-type]
    app = create_app(config)
    runner = make_runner(app, config)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    recorder = app[RECORDINGS].recorders["default"]
    while recorder.preroll.span < 2.0:
        await asyncio.sleep(0.05)
    started = time.time()
    recorder.event_started("killed-mid-clip", started)
    clip = recorder.clip  # (None while recording is stopped)
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(json.dumps({"clip": clip.id if clip else None, "started": started, "port": bound}), flush=True)
    if isinstance(end_after, (int, float)) and clip is not None:
        await asyncio.sleep(end_after)
        recorder.event_ended("killed-mid-clip", time.time())
        await recorder.clip_done(clip.id)
        print(json.dumps({"done": clip.id}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    arguments = sys.argv[1:]
    extra = json.loads(arguments[2]) if len(arguments) > 2 else {}
    asyncio.run(main(arguments[0], int(arguments[1]) if len(arguments) > 1 else 0, extra))
