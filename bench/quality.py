"""Quality tiers against a narrow link: a viewer behind a tbf-shaped link (tests/shaped.py) and one
unshaped, both honest aiortc viewers (tests/honest.py) decoding every picture and reading its
latency stamp, camtrack in a network namespace of its own serving the test pattern.

    python -m bench.quality                 # the shaped viewer's latency and rate, today's server
    python -m bench.quality --kbit 400 --seconds 20

Needs root (network namespaces). Prints one line per viewer: frames a second, latency p50/p95 (ms)
over the window after a settling time.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from tests.honest import Watched
from tests.shaped import ShapedNet, ShapedServer, shaped_viewer


async def shaped_run(kbit: int, seconds: float, settle: float, args: list[str]) -> dict[str, Watched]:
    """Both viewers' window of `seconds` after `settle` seconds with viewer a behind `kbit` kbit/s."""
    net = ShapedNet("ctb")
    try:
        net.shape(kbit)
        server = ShapedServer(net, "--source", "pattern", *args)
        async with server:
            viewers = {side: shaped_viewer(net, side, server.ws_for(side)) for side in ("a", "b")}
            try:
                for viewer in viewers.values():
                    await viewer.start(timeout=60)
                await asyncio.sleep(settle)
                since = time.time()
                await asyncio.sleep(seconds + 0.6)
                seen = {side: viewer.window(since, since + seconds + 0.5) for side, viewer in viewers.items()}
                for side, viewer in viewers.items():
                    print(f"viewer {side}: pictures {viewer.width} wide at the end")
                print("\n".join(line for line in server.log().splitlines() if "tier" in line))
                return seen
            finally:
                await asyncio.gather(*(viewer.stop() for viewer in viewers.values()))
    finally:
        net.delete()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kbit", type=int, default=400, help="viewer a's link, kbit/s (default: 400)")
    parser.add_argument("--seconds", type=float, default=15.0, help="the measured window (default: 15)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before it (default: 5)")
    parser.add_argument("server_args", nargs="*", help="more server.py options (after --)")
    options = parser.parse_args()
    seen = asyncio.run(shaped_run(options.kbit, options.seconds, options.settle, options.server_args))
    for side, watched in seen.items():
        what = f"shaped {options.kbit} kbit/s" if side == "a" else "unshaped"
        print(f"viewer {side} ({what}): {watched}")


if __name__ == "__main__":
    main()
