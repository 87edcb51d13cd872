"""`--mqtt URL`: every event change to an MQTT broker, the way Frigate's users wire it into home
automation (Home Assistant, Node-RED):

- `PREFIX/available`: `online` (retained) while camtrack runs; the broker sets `offline` (camtrack's
  last will) when it goes, and camtrack sets it when it stops;
- `PREFIX/CAMERA/events`: each change of an event of the camera, the JSON of every output;
- `PREFIX/CAMERA/KIND`: `ON` while an event of that kind is open at the camera, else `OFF`
  (retained): `PREFIX/CAMERA/motion` for motion, every camera's from the start.

PREFIX is the URL's path (mqtt://HOST:1883/PREFIX), `camtrack` when it has none. The client is
paho-mqtt's, on a thread of its own (its network loop: connecting, reconnecting with back-off from
1 to 30 s, keep-alive), so a broker that is slow, down or gone costs the event loop nothing: it
only hands messages over (QoS 1, at most QUEUE waiting while the broker is away; more are dropped,
counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import ssl
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from ..sources import redact
from .bus import EventBus, Subscription
from .model import MOTION, Change

logger = logging.getLogger(__name__)

#: messages waiting for the broker (while it is away or slow) before new ones are dropped
QUEUE = 1000
KEEPALIVE = 30


@dataclass(frozen=True)
class Broker:
    """Where the broker is, from --mqtt's URL: mqtt://[USER:PASS@]HOST[:PORT][/PREFIX] (mqtts:// for TLS)."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Broker:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"the MQTT broker must be mqtt://HOST[:PORT][/PREFIX] (or mqtts://), not {redact(url)!r}")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            raise ValueError(f"the MQTT broker's port is not a port: {redact(url)!r}") from None
        prefix = parts.path.strip("/") or "camtrack"
        if any(c in prefix for c in "#+") or len(prefix) > 100:
            raise ValueError(f"the MQTT topic prefix must not hold # or +: {prefix!r}")
        return cls(parts.hostname, port, parts.scheme == "mqtts",
                   unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None, prefix)


class MqttPublisher:
    """Publishes every change of `bus` and the cameras' states (see the module's docstring); a
    BackgroundOutput of the server."""

    def __init__(self, bus: EventBus, url: str, cameras: list[str]) -> None:
        self.bus = bus
        self.url = url
        self.broker = Broker.parse(url)
        self.cameras = cameras
        #: messages handed to the client ("published"), and dropped because QUEUE were waiting ("dropped")
        self.counts: Counter[str] = Counter(published=0, dropped=0)
        self.connected = False
        #: why the last connection failed or ended, while not connected
        self.error: str | None = None
        #: the kinds seen per camera (whose state topics are kept)
        self._kinds: dict[str, set[str]] = {camera: {MOTION} for camera in cameras}
        self._client = self._make_client()
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _make_client(self) -> mqtt.Client:
        broker = self.broker
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"camtrack-{secrets.token_hex(4)}")
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            client.tls_set_context(ssl.create_default_context())
        client.will_set(self.topic("available"), "offline", qos=1, retain=True)
        client.reconnect_delay_set(1, 30)
        client.max_queued_messages_set(QUEUE)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        return client

    def topic(self, *parts: str) -> str:
        return "/".join((self.broker.prefix, *parts))

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._subscription = self.bus.subscribe("mqtt", QUEUE)
        self._client.connect_async(self.broker.host, self.broker.port, KEEPALIVE)
        self._client.loop_start()  # (the client's thread: it connects, and reconnects by itself)
        self._task = self._loop.create_task(self._run(self._subscription), name="mqtt")

    async def stop(self, grace: float = 1.0) -> None:
        """Say `offline`, wait at most `grace` seconds for what is queued, and disconnect."""
        if self._subscription is not None:
            self._subscription.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, grace)
            self._task = None
        client = self._client

        def close() -> None:
            if self.connected:
                info = client.publish(self.topic("available"), "offline", qos=1, retain=True)
                with contextlib.suppress(Exception):
                    info.wait_for_publish(grace)
            client.disconnect()
            client.loop_stop()  # (joins the client's thread: off the event loop)

        await asyncio.to_thread(close)

    def describe(self) -> dict[str, object]:
        return {"state": "connected" if self.connected else "disconnected", "broker": redact(self.url),
                "error": self.error, **self.counts}

    async def _run(self, subscription: Subscription) -> None:
        async for change in subscription:
            self._publish_change(change)

    def _publish_change(self, change: Change) -> None:
        self._publish(self.topic(change.camera, "events"), json.dumps(change.to_json()))
        if self.bus.known_kind(change.camera, change.kind) is None:
            return  # (a state topic for the first MAX_KINDS kinds of a camera only)
        self._kinds.setdefault(change.camera, {MOTION}).add(change.kind)
        if change.action != "update":
            self._publish(*self._state(change.camera, change.kind))

    def _state(self, camera: str, kind: str) -> tuple[str, str, bool]:
        on = any(event.kind == kind for event in self.bus.open_events(camera))
        return self.topic(camera, kind), "ON" if on else "OFF", True

    def _publish(self, topic: str, payload: str, retain: bool = False) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self.counts["dropped"] += 1
        else:
            self.counts["published"] += 1

    # the client's callbacks: on its thread

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._failed(f"refused: {reason}")
            return
        logger.info("MQTT: connected to %s", redact(self.url))
        self.connected, self.error = True, None
        client.publish(self.topic("available"), "online", qos=1, retain=True)
        if self._loop is not None:
            # every state known now, as the bus says it (read on the event loop)
            self._loop.call_soon_threadsafe(self._publish_states)

    def _publish_states(self) -> None:
        for camera, kinds in self._kinds.items():
            for kind in sorted(kinds):
                self._publish(*self._state(camera, kind))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self.connected:
            self.connected = False
            self._failed(f"disconnected: {reason}")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._failed("cannot connect")

    def _failed(self, reason: str) -> None:
        self.connected = False
        if self.error is None:
            logger.warning("MQTT: %s (%s): retrying every 1-30 s (said once until it connects)", redact(self.url),
                           reason)
        self.error = reason
