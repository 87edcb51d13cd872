"""The RTSP server's own counters for /metrics (its viewers are counted with everyone's, by transport)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .server import RtspServer


class RtspCollector(Collector):
    def __init__(self, server: RtspServer[Any]) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        stats = self.server.stats
        yield GaugeMetricFamily("camtrack_rtsp_connections", "RTSP connections open now (playing or not).",
                                value=len(self.server.clients))
        yield CounterMetricFamily("camtrack_rtsp_skipped_pictures", "Pictures RTSP clients could not take in "
                                  "time and skipped (up to the next keyframe).", value=stats.skipped)
        yield CounterMetricFamily("camtrack_rtsp_cut_off", "RTSP clients cut off for taking no picture for "
                                  "5 s.", value=stats.cut_off)
        refused = CounterMetricFamily("camtrack_rtsp_refused", "RTSP connections and requests refused, by why: "
                                      "connections (too many in all or from one address), auth (wrong "
                                      "credentials), request (answered 4xx/5xx).", labels=["reason"])
        refused.add_metric(["connections"], stats.refused)
        refused.add_metric(["auth"], stats.auth_failures)
        refused.add_metric(["request"], stats.bad_requests)
        yield refused
