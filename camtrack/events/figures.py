"""The events' counters as /metrics and /healthz read them (camtrack.outputs.metrics.EventCollector)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .bus import EventBus
from .mqtt import MqttPublisher
from .webhook import Webhook


@dataclass
class EventOutputs:
    """The server's event bus and its server-wide outputs (each None when not configured)."""

    bus: EventBus = field(default_factory=EventBus)
    webhook: Webhook | None = None
    mqtt: MqttPublisher | None = None

    def started(self) -> dict[tuple[str, str], int]:
        """Events started, by (camera, kind)."""
        return dict(self.bus.started)

    def open(self) -> dict[str, int]:
        """Events open now, by camera (every camera that has had one)."""
        counts = {camera: 0 for camera, _ in self.bus.started}
        for event in self.bus.open_events():
            counts[event.camera] = counts.get(event.camera, 0) + 1
        return counts

    def dropped(self) -> dict[str, int]:
        """Changes lost by slow subscribers, by subscriber ("sse", "webhook", "mqtt", "recorder")."""
        return dict(self.bus.dropped)

    def deliveries(self) -> dict[tuple[str, str], int]:
        """(output, result): webhook sent/failed/given_up, mqtt published/dropped."""
        found: dict[tuple[str, str], int] = {}
        if self.webhook is not None:
            found.update({("webhook", result): n for result, n in self.webhook.counts.items()})
        if self.mqtt is not None:
            found.update({("mqtt", result): n for result, n in self.mqtt.counts.items()})
        return found

    def mqtt_connected(self) -> bool | None:
        return None if self.mqtt is None else self.mqtt.connected

    def describe(self) -> dict[str, object]:
        """/healthz's "events"."""
        return {"open": len(self.bus.open_events()), "subscribers": self.bus.subscribers,
                "webhook": self.webhook.describe() if self.webhook is not None else None,
                "mqtt": self.mqtt.describe() if self.mqtt is not None else None}
