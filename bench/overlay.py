"""What sending processing results to every viewer costs the server (issue 21): server CPU with 1 and
16 WebRTC viewers of a camera whose function returns data (bench/functions.py:data_0), the viewers
without and with a data channel (each result then sent to each of them, stamped with its picture),
and the results each viewer got a second.

    python -m bench.overlay [--seconds S]
"""

from __future__ import annotations

import argparse

from bench.run import measure


def data_channel_rows(seconds: float) -> None:
    """The table: 1 and 16 viewers, without and with data channels."""
    print("| viewers | data channel | server CPU % | fps mean | results a second per viewer |")
    print("|---|---|---|---|---|")
    for viewers in (1, 16):
        for data in (False, True):
            row = measure("shared", "h264", 640, 480, viewers, seconds, stamped=False,
                          extra=("--process", "bench/functions.py:data_0"),
                          viewer_options=("--data",) if data else ())
            rate = f"{row.data_rate:.1f}" if data else "-"
            print(f"| {viewers} | {'yes' if data else 'no'} | {row.server_cpu:.0f} | {row.fps_mean:.1f} | {rate} |",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds measured per row")
    data_channel_rows(parser.parse_args().seconds)


if __name__ == "__main__":
    main()
