"""Talking back: a WebRTC viewer's microphone to its camera's ONVIF back-channel (docs/audio.md).

A viewer whose offer sends audio (`sendrecv`) to a camera with `--talk` gets a `sendrecv` audio
m-line; aiortc decodes what it sends. `{"type": "talk", "on": true, "token": ...}` on `/ws` (with
`--talk-token`: a permission apart from watching) starts a `Talk`: the camera's back-channel opened
(camtrack.sources.backchannel, on a thread of its own) and each decoded frame of the viewer's sound
encoded to G.711 and sent to it there, until `"on": false`, the viewer leaving, or the camera
failing. One talker per camera at a time: a second is told the line is busy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from ...sources.backchannel import BackChannel

logger = logging.getLogger(__name__)

#: who talks to each camera now (by camera name): one at a time
_LINES: dict[str, Talk] = {}


class TalkRefused(Exception):
    """The viewer may not talk now; the message says why."""


def talk_url(talk: str | None, source: str) -> str | None:
    """The back-channel a camera's `--talk` names ('source': its own rtsp:// source), or None."""
    if not talk:
        return None
    url = source if talk == "source" else talk
    return url if url.lower().startswith("rtsp://") else None


class Talk:
    """One viewer talking to one camera (see the module's docstring)."""

    def __init__(self, camera: str, url: str, track: MediaStreamTrack, on_end: Callable[[str], None]) -> None:
        self.camera = camera
        self.url = url
        self.track = track
        self.on_end = on_end
        self.frames = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"talk {camera}")
        self._channel: BackChannel | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take the camera's line and open its back-channel (TalkRefused: busy, or the camera has none)."""
        talker = _LINES.get(self.camera)
        if talker is not None and talker is not self:
            raise TalkRefused(f"busy: someone else is talking to {self.camera}")
        _LINES[self.camera] = self
        loop = asyncio.get_running_loop()
        channel = BackChannel(self.url)
        try:
            await loop.run_in_executor(self._executor, channel.open)
        except OSError as exc:
            self._release()
            await loop.run_in_executor(self._executor, channel.close)
            raise TalkRefused(f"the camera's back-channel does not open: {exc}") from None
        self._channel = channel
        self._task = asyncio.ensure_future(self._forward())
        logger.info("talking to %s", self.camera)

    async def _forward(self) -> None:
        loop = asyncio.get_running_loop()
        channel = self._channel
        assert channel is not None
        reason = "stopped"
        try:
            while True:
                frame = await self.track.recv()
                if isinstance(frame, AudioFrame):
                    await loop.run_in_executor(self._executor, channel.send, frame)
                    self.frames += 1
        except MediaStreamError:
            reason = "the viewer's sound ended"
        except OSError as exc:
            reason = f"the camera's back-channel failed: {exc}"
        except asyncio.CancelledError:
            return
        await self.stop()
        self.on_end(reason)

    async def stop(self) -> None:
        """Stop talking: the back-channel closed, the line free."""
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
