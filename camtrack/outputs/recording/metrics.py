"""The recorders' and stores' counters for /metrics (docs/recording.md lists them)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import Recordings

STATES = ("idle", "recording", "stopped", "unsupported", "off")


class RecordingCollector(Collector):
    def __init__(self, recordings: Recordings) -> None:
        self.recordings = recordings

    def collect(self) -> Iterator[Metric]:
        recorders = self.recordings.recorders
        if not recorders:
            return
        state = GaugeMetricFamily("camtrack_recording_state", "1 for the camera's recorder's state now: idle "
                                  "(keeping the pre-roll), recording, stopped (the directory cannot take clips: "
                                  "full, read-only, under --record-min-free), unsupported (not H.264), off.",
                                  labels=["camera", "state"])
        clips = CounterMetricFamily("camtrack_recording_clips", "Clips the camera's recorder finished.",
                                    labels=["camera"])
        written = CounterMetricFamily("camtrack_recording_bytes", "Bytes of the clips the camera's recorder "
                                      "finished.", labels=["camera"])
        events = CounterMetricFamily("camtrack_recording_events", "Events the camera's recorder was told of.",
                                     labels=["camera"])
        missed = CounterMetricFamily("camtrack_recording_missed_events", "Events that made no clip (recording "
                                     "stopped, the camera not H.264).", labels=["camera"])
        stops = CounterMetricFamily("camtrack_recording_stops", "Times recording stopped because the directory "
                                    "could not take clips (it resumes by itself).", labels=["camera"])
        gaps = CounterMetricFamily("camtrack_recording_gaps", "Times the recorder fell behind the camera's "
                                   "packets and went on at the next keyframe.", labels=["camera"])
        preroll = GaugeMetricFamily("camtrack_recording_preroll_bytes", "Bytes of encoded packets (pictures and "
                                    "sound) the camera's pre-roll holds now.", labels=["camera"])
        for name, recorder in recorders.items():
            for each in STATES:
                state.add_metric([name, each], 1.0 if recorder.state == each else 0.0)
            stats = recorder.stats
            clips.add_metric([name], stats.clips)
            written.add_metric([name], stats.bytes)
            events.add_metric([name], stats.events)
            missed.add_metric([name], stats.missed)
            stops.add_metric([name], stats.stops)
            gaps.add_metric([name], stats.gaps)
            preroll.add_metric([name], recorder.preroll.bytes)
        yield from (state, clips, written, events, missed, stops, gaps, preroll)
        stored = GaugeMetricFamily("camtrack_recordings_stored_bytes", "Bytes of the clips in the --record "
                                   "directory.", labels=["dir"])
        count = GaugeMetricFamily("camtrack_recordings_stored", "Clips in the --record directory.", labels=["dir"])
        deleted = CounterMetricFamily("camtrack_recordings_deleted", "Clips deleted, by why: age "
                                      "(--record-max-age), size (--record-max-size), space (--record-min-free), "
                                      "user (DELETE).", labels=["dir", "reason"])
        free = GaugeMetricFamily("camtrack_recordings_free_bytes", "Free bytes on the --record directory's "
                                 "file system.", labels=["dir"])
        for root, store in self.recordings.stores.items():
            shown = str(root)
            stored.add_metric([shown], store.total_bytes)
            count.add_metric([shown], len(store))
            for reason, number in store.stats.deleted.items():
                deleted.add_metric([shown, reason], number)
            space = store.free_bytes()
            if space is not None:
                free.add_metric([shown], space)
        yield from (stored, count, deleted, free)
