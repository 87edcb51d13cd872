"""Talking back: a WebRTC viewer's microphone to its camera's ONVIF back-channel, or to the server's
own speaker for a local camera (`--talk alsa:DEVICE`, camtrack.sources.alsa), docs/audio.md.

A viewer whose offer sends audio (`sendrecv`) to a camera with `--talk` gets a `sendrecv` audio
m-line; aiortc decodes what it sends. `{"type": "talk", "on": true, "token": ...}` on `/ws` (with
`--talk-token`: a permission apart from watching) starts a `Talk`: the camera's back-channel opened
(camtrack.sources.backchannel, on a thread of its own) and each decoded frame of the viewer's sound
encoded to G.711 and sent to it there, until `"on": false`, the viewer leaving, or the camera
failing. One talker per camera at a time: a second is told the line is busy. A viewer whose peer is in a
worker process (--workers) talks the same way: the Talk and the back-channel stay in the main
process (so the one line per camera holds across processes) and the worker relays the sound its
peer hears, while it talks. The peer reads the
viewer's sound as it comes whether or not it talks (peer.Peer.on_heard): nothing piles up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from av import AudioFrame, FFmpegError

from ...sources.alsa import AlsaPlayback, alsa_device, use_system_alsa_config
from ...sources.backchannel import BackChannel

logger = logging.getLogger(__name__)

#: frames (20 ms each) waiting for the camera at most: a camera slower than the viewer loses sound
MAX_PENDING = 10


@runtime_checkable
class Hearing(Protocol):
    """A peer that hears its viewer (peer.Peer, or a worker's peer as the main process sees it,
    camtrack.workers.pool.RemotePeer, whose worker relays what it hears while `on_heard` is set):
    its frames go to `on_heard` while it is set; `hears`: its viewer sends sound at all."""

    on_heard: Callable[[AudioFrame], None] | None

    @property
    def hears(self) -> bool: ...


#: who talks to each camera now (by camera name): one at a time
_LINES: dict[str, Talk] = {}


class TalkRefused(Exception):
    """The viewer may not talk now; the message says why."""


class TalkSink(Protocol):
    """Where a talker's sound goes, blocking (on the talk's own thread): a camera's back-channel
    (BackChannel), or the server's own speaker (AlsaPlayback)."""

    def open(self) -> None: ...

    def send(self, frame: AudioFrame) -> None: ...

    def close(self) -> None: ...


def talk_url(talk: str | None, source: str) -> str | None:
    """Where a camera's `--talk` sends a talker's sound: its back-channel's rtsp:// URL ('source': its
    own rtsp:// source), or `alsa:DEVICE` (the server's own speaker); None: nowhere."""
    if not talk:
        return None
    if alsa_device(talk) is not None:
        return talk
    url = source if talk == "source" else talk
    return url if url.lower().startswith("rtsp://") else None


def talk_sink(url: str) -> TalkSink:
    """The sink of a `talk_url`: the server's ALSA speaker or the camera's back-channel."""
    device = alsa_device(url)
    if device is None:
        return BackChannel(url)
    use_system_alsa_config()  # (done when the camera was built: build_pipeline; here for other callers)
    return AlsaPlayback(device)


class Talk:
    """One viewer talking to one camera (see the module's docstring)."""

    def __init__(self, camera: str, url: str, peer: Hearing, on_end: Callable[[str], None]) -> None:
        self.camera = camera
        self.url = url
        self.peer = peer
        self.on_end = on_end
        self.frames = 0
        #: frames dropped because the camera took them more slowly than they came
        self.dropped = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"talk {camera}")
        self._channel: TalkSink | None = None
        self._task: asyncio.Task[None] | None = None
        #: the viewer's frames not yet handed to the sending thread: a few (a stalled camera drops them)
        self._frames: asyncio.Queue[AudioFrame] = asyncio.Queue(MAX_PENDING)

    async def start(self) -> None:
        """Take the camera's line and open its back-channel or speaker (TalkRefused: busy, or it does
        not open)."""
        talker = _LINES.get(self.camera)
        if talker is not None and talker is not self:
            raise TalkRefused(f"busy: someone else is talking to {self.camera}")
        _LINES[self.camera] = self
        loop = asyncio.get_running_loop()
        channel = talk_sink(self.url)
        try:
            await loop.run_in_executor(self._executor, channel.open)
        except (OSError, FFmpegError) as exc:
            self._release()
            await loop.run_in_executor(self._executor, channel.close)
            what = "speaker" if alsa_device(self.url) is not None else "back-channel"
            raise TalkRefused(f"the camera's {what} does not open: {exc}") from None
        self._channel = channel
        self.peer.on_heard = self._heard
        self._task = asyncio.ensure_future(self._forward())
        logger.info("talking to %s", self.camera)

    async def _forward(self) -> None:
        loop = asyncio.get_running_loop()
        channel = self._channel
        assert channel is not None
        try:
            while True:
                frame = await self._frames.get()
                await loop.run_in_executor(self._executor, channel.send, frame)
                self.frames += 1
        except (OSError, FFmpegError) as exc:
            await self.stop()
            what = "speaker" if alsa_device(self.url) is not None else "back-channel"
            logger.warning("talk to %s ended: its %s failed: %s", self.camera, what, exc)
            self.on_end(f"the camera's {what} failed: {exc}")

    def _heard(self, frame: AudioFrame) -> None:
        try:
            self._frames.put_nowait(frame)
        except asyncio.QueueFull:
            self.dropped += 1

    async def stop(self) -> None:
        """Stop talking: the back-channel closed, the line free."""
        if self.peer.on_heard == self._heard:
            self.peer.on_heard = None
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        channel, self._channel = self._channel, None
        if channel is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, channel.close)
            logger.info("stopped talking to %s (%d frames)", self.camera, self.frames)
        self._release()
        self._executor.shutdown(wait=False)

    def _release(self) -> None:
        if _LINES.get(self.camera) is self:
            del _LINES[self.camera]
