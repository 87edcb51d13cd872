"""`--webhook URL`: every event change POSTed as JSON, one at a time and in order, retried with
back-off; it never blocks anything: its changes wait in its own bounded queue (a webhook that hangs
or refuses loses the oldest once the queue is full, counted), each attempt has a time-out, and the
rest of the server never waits for it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter

import aiohttp

from ..sources import redact
from .bus import EventBus, Subscription
from .model import Change

logger = logging.getLogger(__name__)

#: seconds one POST may take (connecting included)
TIMEOUT = 5.0
#: attempts per change before it is given up
ATTEMPTS = 5
#: the first retry's delay, doubled each time up to MAX_DELAY (±20 % jitter)
FIRST_DELAY, MAX_DELAY = 0.5, 30.0
#: changes waiting for the webhook
QUEUE = 256


class Webhook:
    """POSTs every change of `bus` to `url` (see the module's docstring); a BackgroundOutput of the server."""

    def __init__(self, bus: EventBus, url: str, timeout: float = TIMEOUT, attempts: int = ATTEMPTS,
                 first_delay: float = FIRST_DELAY, queue: int = QUEUE) -> None:
        self.bus = bus
        self.url = url
        self.timeout = timeout
        self.attempts = attempts
        self.first_delay = first_delay
        self.queue = queue
        #: changes delivered ("sent"), attempts that failed ("failed"), changes given up ("given_up")
        self.counts: Counter[str] = Counter(sent=0, failed=0, given_up=0)
        #: the last failure's reason while failing, else None
        self.error: str | None = None
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def dropped(self) -> int:
        return self._subscription.dropped if self._subscription is not None else 0

    def start(self) -> None:
        self._subscription = self.bus.subscribe("webhook", self.queue)
        self._task = asyncio.get_running_loop().create_task(self._run(self._subscription), name="webhook")

    async def stop(self, grace: float = 1.0) -> None:
        """Stop, after at most `grace` seconds for what is queued (the ends of a stopping server)."""
        if self._subscription is not None:
            self._subscription.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, grace)
            self._task = None

    def describe(self) -> dict[str, object]:
        return {"state": "failing" if self.error else "ok", "error": self.error, **self.counts,
                "dropped": self.dropped, "queued": len(self._subscription) if self._subscription else 0}

    async def _run(self, subscription: Subscription) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": "camtrack"}) as session:
            async for change in subscription:
                await self._deliver(session, change)

    async def _deliver(self, session: aiohttp.ClientSession, change: Change) -> None:
        delay = self.first_delay
        for attempt in range(1, self.attempts + 1):
            try:
                async with session.post(self.url, json=change.to_json()) as response:
                    await response.read()
                    if response.status < 300:
                        if self.error is not None:
                            logger.info("webhook %s works again", redact(self.url))
                        self.error = None
                        self.counts["sent"] += 1
                        return
                    reason = f"answered {response.status} {response.reason or ''}".rstrip()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if isinstance(exc, TimeoutError):
                    reason = f"no answer within {self.timeout:g} s"
            self.counts["failed"] += 1
            if self.error is None:
                logger.warning("webhook %s failed (%s): retrying with back-off (said once until it works)",
                               redact(self.url), reason)
            self.error = reason
            if attempt < self.attempts:
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, MAX_DELAY)
        self.counts["given_up"] += 1
