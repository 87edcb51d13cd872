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
pre-roll has its sound from its first picture on; but never more than `seconds` + MAX_GOP_SECONDS
of it (a GOP longer than that loses the sound of its start), and its bytes count in `bytes` and
against `max_bytes` like the pictures' (past it the oldest GOPs go with their sound, then the oldest
sound). When the pictures stall while the sound goes on (no picture for MAX_GOP_SECONDS of sound:
an RTSP camera's video stops, a USB camera is unplugged beside its microphone) the pictures held
are let go (`gap`, counted in `stalls`): a clip then starts at the next keyframe, with the sound
from there, rather than at a picture from before the stall followed by a hole.
"""

from __future__ import annotations

from collections import deque

from ...media.packet import EncodedPacket

#: the most bytes a camera's pre-roll may hold (a 16 Mbit/s camera's 10 s and a GOP fit)
MAX_BYTES = 32 * 1024 * 1024
#: the longest GOP whose sound the pre-roll keeps whole: it holds at most `seconds` plus this of sound,
#: and a picture this much older than the newest sound is taken for a stall
MAX_GOP_SECONDS = 10.0


class PreRoll:
    def __init__(self, seconds: float, max_bytes: int = MAX_BYTES) -> None:
        self.seconds = seconds
        self.max_bytes = max_bytes
        self._gops: deque[list[EncodedPacket]] = deque()
        #: bytes held now (pictures and sound)
        self.bytes = 0
        #: packets dropped waiting for a keyframe (after a gap, at the start, a GOP over budget)
        self.dropped = 0
        #: the sound's packets held, oldest first, and their bytes
        self._audio: deque[EncodedPacket] = deque()
        self.audio_bytes = 0
        #: times the pictures stalled while the sound went on (what was held of them let go)
        self.stalls = 0

    @property
    def audio_seconds(self) -> float:
        """The most seconds of sound held."""
        return self.seconds + MAX_GOP_SECONDS

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
        self._fit()

    def add_audio(self, packet: EncodedPacket) -> None:
        gops = self._gops
        if gops and gops[-1][-1].captured < packet.captured - MAX_GOP_SECONDS:
            self.stalls += 1  # (no picture for that long: what follows will not continue it)
            self.gap()
        self._audio.append(packet)
        self.audio_bytes += packet.size
        self.bytes += packet.size
        self._trim_audio(packet.captured - self.seconds, packet.captured - self.audio_seconds)
        self._fit()

    def _fit(self) -> None:
        """Within `max_bytes`: the oldest GOPs go (with their sound), then the oldest sound."""
        while self.bytes > self.max_bytes and self._gops:
            self._drop_oldest()
        audio = self._audio
        while self.bytes > self.max_bytes and audio:
            size = audio.popleft().size
            self.audio_bytes -= size
            self.bytes -= size

    def audio_since(self, at: float) -> list[EncodedPacket]:
        """The sound's packets captured at or after `at` (a clip's first picture), oldest first."""
        return [packet for packet in self._audio if packet.captured >= at]

    def _trim_audio(self, horizon: float, limit: float | None = None) -> None:
        """Let go of sound captured before the oldest keyframe held (before `horizon` when none is),
        and in any case before `limit`."""
        if self._gops:
            horizon = min(horizon, self._gops[0][0].captured)
        if limit is not None:
            horizon = max(horizon, limit)
        audio = self._audio
        while audio and audio[0].captured < horizon:
            size = audio.popleft().size
            self.audio_bytes -= size
            self.bytes -= size

    def gap(self) -> None:
        """Packets were missed (or the pictures stalled, or their feed closed): what follows cannot
        be decoded with what is held. (The sound stays: it is trimmed by time from here on.)"""
        self._gops.clear()
        self.bytes = self.audio_bytes

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
