"""A WebRTC viewer's data channel: the processing function's results (camtrack.outputs.results), on
the viewer's own peer connection, each stamped with the RTP timestamp of the picture it describes.

The viewer opens the channel (the page creates one before its offer); the server opens none, so a
viewer without one (WHEP players, GStreamer) is unaffected. The viewer is expected to send nothing
on it: what it sends is ignored, and past MAX_INCOMING messages the channel is closed. One channel
per peer: others are closed as they open, and a peer that opens more than MAX_CHANNELS is ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiortc import RTCDataChannel

from ..results import ResultFeed, ResultSender, SentPictures

logger = logging.getLogger(__name__)

#: messages a viewer may send on its channel before it is closed (none is expected)
MAX_INCOMING = 16
#: channels a peer may open (one is used) before the peer is ended
MAX_CHANNELS = 4
#: bytes queued on the channel above which a result is skipped (newest wins, nothing queues)
MAX_BUFFERED = 64 * 1024


class DataChannels:
    """A peer's data channels: the first carries the camera's results (if it has a processing
    function), the others are refused. `end(reason)` ends the peer (too many channels)."""

    def __init__(self, processing: ResultFeed | None, pictures: SentPictures | None, label: str,
                 end: Callable[[str], None]) -> None:
        self.processing = processing
        self.pictures = pictures
        self.label = label
        self.end = end
        self.channel: RTCDataChannel | None = None
        self.sender: ResultSender | None = None
        #: channels opened by the viewer; messages it sent
        self.opened = 0
        self.incoming = 0
        self._task: asyncio.Task[None] | None = None

    def on_channel(self, channel: RTCDataChannel) -> None:
        """The viewer opened `channel` (the peer connection's "datachannel" event)."""
        self.opened += 1
        if self.opened > 1:  # (also after the first was closed: one per peer)
            channel.close()
            if self.opened > MAX_CHANNELS:
                logger.info("%s: opened %d data channels; ending it", self.label, self.opened)
                self.end(f"opened more than {MAX_CHANNELS} data channels")
            return
        self.channel = channel
        channel.on("message", self._on_message)
        channel.on("close", self.close)
        if self.processing is not None:
            sender = self.sender = ResultSender(self.processing, self._send,
                                                lambda: channel.bufferedAmount > MAX_BUFFERED,
                                                self.pictures, "rtp")
            self._task = asyncio.ensure_future(sender.run())

    def _send(self, text: str) -> None:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            raise ConnectionError("the data channel is closed")
        channel.send(text)

    def _on_message(self, message: object) -> None:
        self.incoming += 1
        if self.incoming > MAX_INCOMING and self.channel is not None:
            logger.info("%s: sent %d messages on its data channel (none is expected); closing it",
                        self.label, self.incoming)
            channel, self.channel = self.channel, None
            channel.remove_all_listeners("message")
            channel.close()
            self.close()

    def close(self) -> None:
        """Stop sending (the channel or the peer closed)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
