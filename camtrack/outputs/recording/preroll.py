"""The pre-roll: a camera's last seconds of encoded packets, kept so that a clip can start before
its trigger without decoding or encoding anything.

It holds whole GOPs (each from a keyframe to the packet before the next keyframe): the oldest GOP
goes as soon as the next one's keyframe lies at least `seconds` before the newest packet, so the
buffer always has a keyframe at least `seconds` old (once the camera has run that long) and at most
`seconds` plus one GOP of packets. `max_bytes` bounds it whatever the GOP: past it the oldest GOPs
go, and a single GOP larger than the budget is dropped whole (the next clip then starts at the
next keyframe) rather than kept without its keyframe.

A camera's sound (`add_audio`: Opus packets, each decodable alone) is kept beside for the same
window: back to the oldest GOP's keyframe (before the first keyframe, `seconds` back), so a clip's
pre-roll has its sound from its first picture on.
"""

from __future__ import annotations

from collections import deque

from ...media.packet import EncodedPacket

#: the most bytes a camera's pre-roll may hold (a 16 Mbit/s camera's 10 s and a GOP fit)
MAX_BYTES = 32 * 1024 * 1024


class PreRoll:
    def __init__(self, seconds: float, max_bytes: int = MAX_BYTES) -> None:
        self.seconds = seconds
        self.max_bytes = max_bytes
        self._gops: deque[list[EncodedPacket]] = deque()
        #: bytes held now
        self.bytes = 0
        #: packets dropped waiting for a keyframe (after a gap, at the start, a GOP over budget)
        self.dropped = 0
        #: the sound's packets held, oldest first, and their bytes
        self._audio: deque[EncodedPacket] = deque()
        self.audio_bytes = 0

    def __len__(self) -> int:
        return sum(len(gop) for gop in self._gops)

    @property
    def span(self) -> float:
        """Seconds between the oldest and the newest packet held."""
        if not self._gops:
            return 0.0
        return self._gops[-1][-1].captured - self._gops[0][0].captured

    def add(self, packet: EncodedPacket) -> None:
        gops = self._gops
        if packet.keyframe:
            gops.append([packet])
        elif gops:
            gops[-1].append(packet)
        else:
            self.dropped += 1  # nothing decodes without the keyframe before it
            return
        self.bytes += packet.size
        horizon = packet.captured - self.seconds
        while len(gops) > 1 and gops[1][0].captured <= horizon:
            self._drop_oldest()
        while self.bytes > self.max_bytes and gops:
            self._drop_oldest()

    def add_audio(self, packet: EncodedPacket) -> None:
        self._audio.append(packet)
        self.audio_bytes += packet.size
        self._trim_audio(packet.captured - self.seconds)

    def audio_since(self, at: float) -> list[EncodedPacket]:
        """The sound's packets captured at or after `at` (a clip's first picture), oldest first."""
        return [packet for packet in self._audio if packet.captured >= at]

    def _trim_audio(self, horizon: float) -> None:
        """Let go of sound captured before the oldest keyframe held (before `horizon` when none is)."""
        if self._gops:
            horizon = min(horizon, self._gops[0][0].captured)
        audio = self._audio
        while audio and audio[0].captured < horizon:
            self.audio_bytes -= audio.popleft().size

    def gap(self) -> None:
        """Packets were missed: what follows cannot be decoded with what is held."""
        self._gops.clear()
        self.bytes = 0

    def since(self, at: float) -> list[EncodedPacket]:
        """The packets from the newest keyframe captured at or before `at` (else from the oldest
        keyframe held) to the newest."""
        gops = list(self._gops)
        start = 0
        for index, gop in enumerate(gops):
            if gop[0].captured <= at:
                start = index
        return [packet for gop in gops[start:] for packet in gop]

    def _drop_oldest(self) -> None:
        gop = self._gops.popleft()
        self.bytes -= sum(packet.size for packet in gop)
        if self._gops and self._audio:
            self._trim_audio(self._gops[0][0].captured)
