"""The latency stamp: a frame's capture time drawn as 32 black/white cells.

The stamp is `int(time.time() * 1000) % 2**32`, written as 32 cells of 16×16 pixels in
the top-left corner (rows 0–15, most significant bit first, white = 1). Whoever decodes a
frame can read it back and subtract it from their own clock to get glass-to-glass latency.
In frames narrower than 512 pixels the cells shrink to `width // 32` square so all 32 fit.
"""

from __future__ import annotations

import time

import numpy as np

BITS = 32
CELL = 16
MODULUS = 1 << BITS


def now_ms() -> int:
    """The current wall-clock time in stamp units."""
    return int(time.time() * 1000) % MODULUS


def cell_size(width: int) -> int:
    """The side of one stamp cell in a frame `width` pixels wide."""
    return max(1, min(CELL, width // BITS))


def write_stamp(image: np.ndarray, stamp: int) -> None:
    """Draw `stamp` into the top-left corner of a BGR or grey image, in place."""
    cell = cell_size(image.shape[1])
    for bit in range(BITS):
        on = (stamp >> (BITS - 1 - bit)) & 1
        image[0:cell, bit * cell : (bit + 1) * cell] = 255 if on else 0


def read_stamp(image: np.ndarray) -> int:
    """Read the stamp back from a BGR, grey or I420 (Y plane first) image."""
    if image.ndim == 3:
        image = image.mean(axis=2)
    cell = cell_size(image.shape[1])
    # sample the middle half of each cell, away from edges that compression blurs
    lo, hi = cell // 4, max(cell // 4 + 1, cell - cell // 4)
    value = 0
    for bit in range(BITS):
        x = bit * cell
        level = float(image[lo:hi, x + lo : x + hi].mean())
        value = (value << 1) | (1 if level >= 128 else 0)
    return value


def latency_ms(stamp: int, at_ms: int | None = None) -> int:
    """Milliseconds from `stamp` to `at_ms` (default: now), across the 2**32 wrap."""
    if at_ms is None:
        at_ms = now_ms()
    delta = (at_ms - stamp) % MODULUS
    return int(delta - MODULUS if delta >= MODULUS // 2 else delta)
