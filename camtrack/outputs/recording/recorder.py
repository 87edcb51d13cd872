"""A camera's recorder: clips of its events, with true pre-roll, from the packets viewers get.

A background output (like the Janus publisher) that reads the camera's main packet feed (its own
H.264 passed through, or the shared encoder's) for as long as the server runs, and never decodes
or encodes: it keeps the last seconds as packets (`PreRoll`), and when an event starts it writes
a clip from the newest keyframe at least `pre_roll` seconds before the event's start to
`post_roll` seconds after its end; an event that starts before the clip ended extends it (one clip
for overlapping and adjacent events). The event source (the event bus) calls `event_started` and
`event_ended` with wall-clock times, the clock of the packets' capture times.

The file is written on a thread of the recorder's own (`_Writer`): the event loop only hands it
packets. A clip is written as `.mp4.part`, each fragment flushed as it completes, and renamed when
done (camtrack.outputs.recording.store). When the store cannot take clips (a full or read-only
file system, the free-space floor), recording stops with one log line and resumes by itself
within WATCH_INTERVAL of space coming back; viewers never wait on any of it.

A camera with sound (its audio feed, camtrack.media.audio: Opus, encoded once for every listener)
is recorded with it: the recorder is one more listener of that feed for as long as it keeps a
pre-roll (the feed runs while read), keeps its packets in the pre-roll beside the pictures, and
hands them to the same thread, which writes them as the clip's second track, placed on the
pictures' timeline by their capture times (fmp4.Fmp4Writer.add_audio). A clip has that track when
sound came in the last AUDIO_RECENT seconds before its first picture; a camera without sound (none,
--audio off, a stream without an audio track) makes video-only clips.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from ...media.feeds import FeedClosed, PacketFeed
from ...media.packet import EncodedPacket, MediaKind
from ...sources.h264 import parse_sps
from .fmp4 import TIMESCALE, Fmp4Writer, opus_channels, parameter_sets, repair
from .preroll import MAX_BYTES, MAX_GOP_SECONDS, PreRoll
from .store import Store

logger = logging.getLogger(__name__)

#: seconds between checks of the store's space (and between retention runs: RETENTION_INTERVAL)
WATCH_INTERVAL = 2.0
RETENTION_INTERVAL = 60.0
#: a clip longer than this is split (at a keyframe) into the next clip, so no file grows forever
MAX_CLIP_SECONDS = 1800.0
#: the event id and kind of continuous recording (RecorderSettings.segment)
CONTINUOUS = "continuous"
#: bytes handed to the writing thread and not written yet: past this the disk is too slow, the clip ends
MAX_BACKLOG = 64 * 1024 * 1024
#: a clip gets a sound track when the camera's sound came within this many seconds of its start
AUDIO_RECENT = 2.0


class RecordedCamera(Protocol):
    """What a recorder reads of its camera (camtrack.outputs.directory.Camera has it)."""

    @property
    def name(self) -> str: ...

    def packets(self, kind: MediaKind = MediaKind.VIDEO) -> PacketFeed | None: ...


@dataclass
class RecorderSettings:
    pre_roll: float = 5.0
    post_roll: float = 5.0
    max_clip: float = MAX_CLIP_SECONDS
    #: record continuously too, in clips of this many seconds (0: events only)
    segment: float = 0.0
    pre_roll_bytes: int = MAX_BYTES


@dataclass
class RecorderStats:
    clips: int = 0
    #: bytes of finished clips, and of every clip written (finished or not)
    bytes: int = 0
    events: int = 0
    #: events that made no clip (recording stopped, the camera not H.264)
    missed: int = 0
    #: times writing failed (a full or read-only disk) or recording stopped for space
    stops: int = 0
    #: gaps in the camera's packets the recorder fell behind on (it resumed at the next keyframe)
    gaps: int = 0
    #: seconds from an event's start to its clip's pre-roll being in the file (the last clip's)
    last_latency: float | None = None


@dataclass
class _Clip:
    id: str = ""
    #: event ids and kinds of the clip
    events: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    #: the capture time of its first picture (0 until it has one)
    start: float = 0.0
    #: when its last picture is due: the capture time past which it ends (None while an event is open)
    deadline: float | None = None
    #: waiting for a keyframe (before its first picture, after a gap)
    waiting: bool = True
    #: what the event loop handed to the thread, in bytes; what the thread wrote (its own count)
    queued: int = 0
    written: int = 0
    #: set by the thread when writing failed
    failed: bool = False
    #: time.monotonic() of the event that opened it
    opened: float = 0.0
    codec: tuple[int, int, list[bytes], list[bytes]] = (0, 0, [], [])
    #: the channels of its sound track (0: the clip has none)
    audio: int = 0


class Recorder:
    """Records one camera's events into `store` (see the module's docstring)."""

    def __init__(self, camera: RecordedCamera, store: Store, settings: RecorderSettings | None = None) -> None:
        self.camera = camera
        self.store = store
        self.settings = settings or RecorderSettings()
        self.preroll = PreRoll(self.settings.pre_roll, self.settings.pre_roll_bytes)
        self.stats = RecorderStats()
        #: idle (buffering the pre-roll), recording, stopped (no space: `problem` says why),
        #: unsupported (not H.264), or off (before start, after stop)
        self.state = "off"
        self.problem: str | None = None
        self.clip: _Clip | None = None
        #: events open now: id -> kind
        self.active: dict[str, str | None] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._writer = _Writer(self)
        self.loop: asyncio.AbstractEventLoop | None = None
        #: time.monotonic() of the last packet of the camera's sound, and its channels
        self._audio_at = -1e9
        #: capture time of the newest picture (the sound ends a clip only when the pictures stopped)
        self._picture_at = -1e9
        self._audio_channels = 1

    # -- the BackgroundOutput interface

    def start(self) -> None:
        if self._tasks:
            return
        self.loop = asyncio.get_running_loop()
        self.state = "idle"
        self._tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._watch()),
                       asyncio.ensure_future(self._read_audio())]
        if self.settings.segment:
            # continuous recording: an event that never ends, cut into clips of `segment` seconds
            self.active[CONTINUOUS] = CONTINUOUS
            self._open_clip(time.time())
            assert self.clip is not None
            self.clip.events, self.clip.kinds = [CONTINUOUS], [CONTINUOUS]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.clip is not None:
            self._close_clip()
        await asyncio.to_thread(self._writer.stop, 3.0)  # (a server stops within 5 s)
        self.state = "off"

    def describe(self) -> dict[str, object]:
        clip = self.clip
        return {"state": self.state, "problem": self.problem, "dir": str(self.store.root),
                "clip": clip.id if clip is not None and clip.id else None, "events": len(self.active),
                "clips": self.stats.clips, "missed": self.stats.missed,
                "pre_roll_bytes": self.preroll.bytes, "pre_roll_seconds": round(self.preroll.span, 3)}

    # -- what the event source calls

    def event_started(self, event_id: str, at: float, kind: str | None = None) -> None:
        """Event `event_id` (of `kind`, if given) started at wall-clock time `at`: a clip from
        `pre_roll` before `at`, or the clip being written goes on."""
        if event_id in self.active:
            return
        self.active[event_id] = kind
        self.stats.events += 1
        if self.state in ("stopped", "unsupported", "off"):
            self.stats.missed += 1
            return
        clip = self.clip
        if clip is None:
            self._open_clip(at)
            clip = self.clip
        assert clip is not None
        clip.deadline = None
        clip.events.append(event_id)
        if kind and kind not in clip.kinds:
            clip.kinds.append(kind)

    def event_ended(self, event_id: str, at: float) -> None:
        """Event `event_id` ended at wall-clock time `at`: once no event is open, the clip ends
        with the first picture captured `post_roll` after the last end."""
        if self.active.pop(event_id, "?") == "?":
            return
        clip = self.clip
        if clip is not None and not self.active:
            clip.deadline = max(clip.deadline or 0.0, at + self.settings.post_roll)

    # -- reading the camera's packets (on the event loop: cheap, no I/O)

    async def _read(self) -> None:
        while True:
            feed = self.camera.packets()
            if feed is None:
                self._unsupported("the camera has no shared packets (--encoder per-viewer)")
                return
            feed.attach(self)
            after = 0
            try:
                while True:
                    read = await feed.next_packet(after)
                    if after and read.skipped:
                        self._gap()
                    after = read.item.seq
                    self._on_packet(read.item)
                    if self.state == "unsupported":
                        return  # (and lets go of the camera: nothing of it will be recorded)
            except FeedClosed:
                self._video_closed()
            finally:
                feed.detach(self)
            await asyncio.sleep(1.0)

    def _video_closed(self) -> None:
        """The pictures' feed closed (the camera stopped or went away): what comes after it reopens
        does not continue what is held, nor the clip (its pictures' clock may start over): the clip
        ends, and the events still open go on in a clip from the next keyframe."""
        self.preroll.gap()
        clip = self.clip
        if clip is not None and clip.id:
            self._continue_clip()

    def _continue_clip(self) -> None:
        """End the clip; the events still open (if any) go on in a clip that starts at the next
        keyframe."""
        self._close_clip()
        if self.active:
            self.clip = _Clip(events=list(self.active), kinds=_kinds(self.active), opened=time.monotonic())
            self.state = "recording"

    def _on_packet(self, packet: EncodedPacket) -> None:
        if packet.codec.codec != "h264":
            self._unsupported(f"clips are H.264 and the camera sends {packet.codec.codec}")
            return
        self.preroll.add(packet)
        self._picture_at = packet.captured
        clip = self.clip
        if clip is None:
            return
        if clip.waiting:
            if not packet.keyframe:
                return
            if not clip.id:
                self._begin(clip, packet)
            clip.waiting = False
        elif packet.keyframe and packet.captured - clip.start >= (self.settings.segment or self.settings.max_clip):
            # long enough: the rest goes on in a clip of its own (of the events still open)
            self._close_clip()
            self.clip = clip = _Clip(events=list(self.active), kinds=_kinds(self.active), opened=time.monotonic())
            self.state = "recording"
            self._begin(clip, packet)
            clip.waiting = False
        self._write(clip, packet)
        if clip.deadline is not None and packet.captured >= clip.deadline and not self.active:
            self._close_clip()

    async def _read_audio(self) -> None:
        """The camera's sound, while the recorder keeps a pre-roll (not while it is stopped): an
        attached reader keeps the sound's feed (its one Opus encoder) running."""
        while True:
            feed = self.camera.packets(MediaKind.AUDIO)
            if feed is None:
                return  # (no sound: video-only clips)
            if self.state in ("stopped", "unsupported", "off"):
                await asyncio.sleep(1.0)
                continue
            feed.attach(self)
            after = 0
            try:
                while self.state not in ("stopped", "unsupported", "off"):
                    read = await feed.next_packet(after)
                    after = read.item.seq
                    self._on_audio(read.item)
            except FeedClosed:
                pass
            finally:
                feed.detach(self)
            await asyncio.sleep(1.0)

    def _on_audio(self, packet: EncodedPacket) -> None:
        if packet.codec.codec != "opus":
            return
        if time.monotonic() - self._audio_at > AUDIO_RECENT:
            self._audio_channels = opus_channels(bytes(packet.packet))
        self._audio_at = time.monotonic()
        self.preroll.add_audio(packet)
        clip = self.clip
        if clip is None or not clip.id:
            return
        if clip.deadline is not None and packet.captured >= clip.deadline + AUDIO_RECENT and not self.active:
            self._close_clip()  # (its pictures stalled: no picture came to end it)
            return
        if (packet.captured - clip.start >= (self.settings.segment or self.settings.max_clip) + MAX_GOP_SECONDS
                and packet.captured - self._picture_at >= MAX_GOP_SECONDS):
            # long enough, and no picture for as long: the pictures stalled (a camera whose keyframes
            # are further apart than that, still sending pictures, is split at its next keyframe)
            self._continue_clip()
            return
        if clip.audio and packet.captured >= clip.start:
            self._write(clip, packet, "audio")

    def _gap(self) -> None:
        self.stats.gaps += 1
        self.preroll.gap()
        if self.clip is not None:
            self.clip.waiting = True  # (the clip goes on at the next keyframe)

    def _unsupported(self, why: str) -> None:
        if self.state != "unsupported":
            logger.warning("recorder %s: not recording: %s", self.camera.name, why)
        self.state, self.problem = "unsupported", why
        if self.clip is not None:
            self._close_clip()

    # -- clips

    def _open_clip(self, at: float) -> None:
        clip = self.clip = _Clip(opened=time.monotonic())
        self.state = "recording"
        packets = self.preroll.since(at - self.settings.pre_roll)
        if packets:
            self._begin(clip, packets[0])
            clip.waiting = False
            sound = self.preroll.audio_since(clip.start) if clip.audio else []
            # the pictures and the sound in capture order (as they will go on coming); both are
            # bounded (PreRoll: max_bytes, and at most audio_seconds of sound) and each in order
            merged = heapq.merge(((p.captured, 0, p) for p in packets), ((p.captured, 1, p) for p in sound),
                                 key=lambda x: (x[0], x[1]))
            for _captured, is_audio, packet in merged:
                self._write(clip, packet, "audio" if is_audio else "packet")

    def _begin(self, clip: _Clip, keyframe: EncodedPacket) -> None:
        """Name the clip after its first picture and have the thread open its file."""
        clip.start = keyframe.captured
        clip.id = self.store.new_id(self.camera.name, keyframe.captured)
        codec = keyframe.codec
        clip.codec = (codec.width, codec.height, [], [])
        clip.audio = self._audio_channels if time.monotonic() - self._audio_at <= AUDIO_RECENT else 0
        self._writer.put(("open", clip, keyframe))

    def _write(self, clip: _Clip, packet: EncodedPacket, what: str = "packet") -> None:
        if clip.failed:
            return
        if clip.queued - clip.written > MAX_BACKLOG:
            self._stopped(f"the disk takes clips more slowly than the camera sends them "
                          f"({MAX_BACKLOG // (1024 * 1024)} MB behind)")
            return
        clip.queued += packet.size
        self._writer.put((what, clip, packet))

    def _close_clip(self) -> None:
        clip, self.clip = self.clip, None
        if clip is not None and clip.id:
            self._writer.put(("close", clip, None))
        if self.state == "recording":
            self.state = "idle"

    # -- what the writing thread reports (on the event loop)

    def _clip_written(self, clip: _Clip, info: dict[str, Any]) -> None:
        self.stats.clips += 1
        self.stats.bytes += int(info.get("bytes") or 0)

    def _clip_started(self, clip: _Clip, seconds: float) -> None:
        self.stats.last_latency = seconds

    def _write_failed(self, clip: _Clip, reason: str) -> None:
        self._stopped(reason)

    def _stopped(self, reason: str) -> None:
        if self.state != "stopped":
            self.stats.stops += 1
            logger.warning("recorder %s: recording stopped: %s; it resumes by itself when it can write again",
                           self.camera.name, reason)
        self.state, self.problem = "stopped", reason
        self.store.problem = reason
        clip = self.clip
        if clip is not None:
            clip.failed = True
            self._close_clip()
            self.state = "stopped"

    async def _watch(self) -> None:
        """Retention now and then; the store's space every WATCH_INTERVAL: stop when it cannot
        take clips, resume when it can."""
        last_retention = 0.0
        while True:
            now = time.monotonic()
            if now - last_retention >= RETENTION_INTERVAL or self.store.problem is not None:
                last_retention = now
                await asyncio.to_thread(self.store.enforce)
            problem = await asyncio.to_thread(self.store.check_space)
            if problem is not None and self.state not in ("unsupported", "off"):
                self._stopped(problem)
            elif problem is None and self.state == "stopped":
                logger.info("recorder %s: recording resumes (%s can take clips again)", self.camera.name,
                            self.store.root)
                self.state, self.problem = "idle", None
                if self.active:
                    self._open_clip(time.time())
                    clip = self.clip
                    assert clip is not None
                    clip.events, clip.kinds = list(self.active), _kinds(self.active)
            await asyncio.sleep(WATCH_INTERVAL)

    async def clip_done(self, clip_id: str) -> None:
        """(For callers that wait for a clip: returns once its sidecar says it is finished.)"""
        while True:
            info = self.store.get(clip_id)
            if info is not None and not info.get("recording"):
                return
            await asyncio.sleep(0.05)


def _kinds(events: dict[str, str | None]) -> list[str]:
    """The kinds of `events`, each once, in order."""
    return list(dict.fromkeys(kind for kind in events.values() if kind))


Command = tuple[str, _Clip, EncodedPacket | None]


class _Writer:
    """The recorder's writing thread: opens, fills and closes clip files, in the order the event
    loop handed the commands over."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self._queue: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._open: dict[int, tuple[BinaryIO, Fmp4Writer, dict[str, Any], _Clip]] = {}

    def put(self, command: Command) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._main, name=f"recorder {self.recorder.camera.name}",
                                            daemon=True)
            self._thread.start()
        self._queue.put(command)

    def stop(self, timeout: float) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)
        self._thread = None

    def _report(self, call: Any, *args: Any) -> None:
        loop = self.recorder.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(call, *args)
            except RuntimeError:
                pass

    def _main(self) -> None:
        while True:
            command = self._queue.get()
            if command is None:
                for key in list(self._open):
                    self._finish(key)
                return
            what, clip, packet = command
            if clip.failed and what != "close":
                continue
            try:
                if what == "open":
                    assert packet is not None
                    self._start(clip, packet)
                elif what == "packet":
                    assert packet is not None
                    opened = self._open.get(id(clip))
                    if opened is not None:
                        writer = opened[1]
                        flushed = writer.bytes
                        writer.add(bytes(packet.packet), int(packet.packet.pts or 0), packet.keyframe)
                        clip.written += packet.size
                        if writer.bytes != flushed:  # (a fragment went to the file)
                            self.recorder.store.note(clip.id, bytes=writer.bytes,
                                                     duration=round(writer.duration / TIMESCALE, 3))
                        if opened[2].get("_latency") is None and clip.written >= clip.queued:
                            # the pre-roll (all that was queued at the start) is in the file
                            opened[2]["_latency"] = time.monotonic() - clip.opened
                            self._report(self.recorder._clip_started, clip, opened[2]["_latency"])
                elif what == "audio":
                    assert packet is not None
                    opened = self._open.get(id(clip))
                    if opened is not None:
                        opened[1].add_audio(bytes(packet.packet), int(packet.packet.pts or 0), packet.captured)
                        clip.written += packet.size
                elif what == "close":
                    self._finish(id(clip))
            except (OSError, ValueError) as exc:
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    self.recorder.store.mark_full()
                clip.failed = True
                reason = getattr(exc, "strerror", None) or str(exc)
                self._abandon(id(clip))
                self._report(self.recorder._write_failed, clip, f"cannot write {clip.id}: {reason}")

    def _start(self, clip: _Clip, keyframe: EncodedPacket) -> None:
        store = self.recorder.store
        data = bytes(keyframe.packet)
        sps, pps = parameter_sets(data)
        if not sps or not pps:
            sps_pps = parameter_sets(b"".join(keyframe.codec.parameter_sets))
            sps, pps = sps or sps_pps[0], pps or sps_pps[1]
        if not sps or not pps:
            raise ValueError("the keyframe has no SPS/PPS")
        width, height = keyframe.codec.width, keyframe.codec.height
        if not (width and height):
            described = parse_sps(sps[0])
            width, height = described.width, described.height
        part = store.path(clip.id, ".mp4.part")
        part.parent.mkdir(parents=True, exist_ok=True)
        file = open(part, "w+b")  # noqa: SIM115 - closed by _finish or _abandon
        try:
            writer = Fmp4Writer(file, width, height, sps, pps, audio_channels=clip.audio, start=clip.start)
            info = {"id": clip.id, "camera": self.recorder.camera.name, "start": clip.start, "end": None,
                    "events": list(clip.events), "kinds": list(clip.kinds), "protected": False, "recording": True,
                    "bytes": writer.bytes, "duration": 0.0, "width": width, "height": height,
                    "pre_roll": self.recorder.settings.pre_roll, "post_roll": self.recorder.settings.post_roll,
                    "audio": "opus" if clip.audio else None}
            store.save(info)
        except BaseException:
            file.close()
            raise
        self._open[id(clip)] = (file, writer, info, clip)

    def _finish(self, key: int) -> None:
        opened = self._open.pop(key, None)
        if opened is None:
            return
        file, writer, info, clip = opened
        store = self.recorder.store
        clip_id = info["id"]
        try:
            writer.finish()
        finally:
            file.close()
        store.path(clip_id, ".mp4.part").replace(store.path(clip_id))
        info.pop("_latency", None)
        info.update(recording=False, bytes=writer.bytes, duration=round(writer.duration / TIMESCALE, 3),
                    end=info["start"] + writer.duration / TIMESCALE, events=list(clip.events),
                    kinds=list(clip.kinds))
        store.save(info)
        self._report(self.recorder._clip_written, clip, dict(info))

    def _abandon(self, key: int) -> None:
        """Writing failed: close the file as far as it went (up to its last complete fragment),
        as well as the failing disk allows; else the next start does (Store.load)."""
        opened = self._open.pop(key, None)
        if opened is None:
            return
        file, _writer, info, clip = opened
        store = self.recorder.store
        try:
            file.close()
        except OSError:
            pass
        try:
            part = store.path(info["id"], ".mp4.part")
            fixed = repair(part)
            part.replace(store.path(info["id"]))
            info.pop("_latency", None)
            info.update(recording=False, bytes=fixed.kept, duration=round(fixed.seconds, 3),
                        end=info["start"] + fixed.seconds, events=list(clip.events), kinds=list(clip.kinds))
            store.save(info)
        except (OSError, ValueError) as exc:
            logger.warning("recorder %s: %s stays unfinished until the next start: %s",
                           self.recorder.camera.name, info["id"], exc)
