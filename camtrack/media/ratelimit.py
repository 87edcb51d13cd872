"""A token bucket: how camtrack lets a burst through and then holds a client to a rate."""

from __future__ import annotations

import time


class TokenBucket:
    """Allows `burst` units at once and `rate` units a second after that."""

    def __init__(self, burst: float, rate: float) -> None:
        self.capacity, self.rate = float(burst), float(rate)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self, amount: float = 1.0) -> bool:
        """Spend `amount` if the bucket holds it; False (and nothing spent) if not."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True
