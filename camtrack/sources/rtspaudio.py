"""An RTSP camera's sound read in the same session as its picture (camtrack's own reader:
`camtrack.sources.rtsp.RtspSession`), so that a camera allowing one session gives both, and is asked
once. The session's reader hands over the sound's access units with their capture times on the
picture's timeline (through both tracks' RTCP sender reports, else their arrival); this source
decodes them (AAC, G.711) into 20 ms frames of 48 kHz mono on the audio feed's thread, or passes
Opus on, and only while the feed runs (someone listens).

A camera whose picture or sound camtrack's reader does not read (another codec, RTSP over UDP) has
its sound read by PyAV (`AvAudioSource`), in a session of its own, as before."""

from __future__ import annotations

import fractions
import logging
import threading
from typing import Any

import av

from ..media.audio import AUDIO_CLOCK_RATE, FRAME_SAMPLES, G711_CLOCK_RATE, PASSED_CODECS, AudioChunk
from .rtpaudio import opus_samples
from .rtsp import RtspError, RtspSession, RtspUnsupported, acquire, release
from .urls import redact

logger = logging.getLogger(__name__)

#: AUs in a row that do not decode before the sound is given up (the feed retries, says why)
MAX_UNDECODABLE = 50
DECODERS = {"aac": "aac", "latm": "aac", "pcmu": "pcm_mulaw", "pcma": "pcm_alaw"}


class RtspAudioSource:
    """The sound of an rtsp:// camera, from the session its picture is read in (see the module)."""

    def __init__(self, url: str, *, open_timeout: float = 10.0, read_timeout: float = 5.0) -> None:
        self.url = url
        self.description = f"audio of {redact(url)}"
        self.timeouts = (open_timeout, read_timeout)
        self.codec_name = ""
        self._session: RtspSession | None = None
        self._interrupted = threading.Event()
        self._decoder: Any = None
        self._resampler: av.AudioResampler | None = None
        self._fifo: av.AudioFifo | None = None
        #: capture time of the first sample in the FIFO
        self._head: float | None = None
        self._queue: list[AudioChunk] = []
        self._undecodable = 0
        #: camtrack's name of the camera's G.711 when it is passed on as it comes (pcmu, pcma), else ""
        self._g711 = ""
        #: AUs that did not decode (counted for the log and tests)
        self.undecodable = 0

    @property
    def session(self) -> RtspSession | None:
        return self._session

    def open(self) -> None:
        self.close()
        # an interrupt is for good (the feed makes a source anew for each run, and interrupts it only
        # to stop the run): never cleared here, or one that came between the run's check of its stop
        # and this open would be lost, and a silent camera would hold the stopping run until the open
        # gave up (5 s: it waits an answer for the read timeout)
        if self._interrupted.is_set():
            raise RtspError("stopped before it opened")
        session = acquire(self.url, "audio", open_timeout=self.timeouts[0], read_timeout=self.timeouts[1])
        self._session = session
        if self._interrupted.is_set():  # (stopped while it opened: the session is let go of at once)
            self.close()
            raise RtspError("stopped while it opened")
        track = session.audio
        if track is None:
            problem = session.audio_problem
            self.close()
            if problem is None:
                raise ValueError("no audio track")
            raise RtspUnsupported(problem)
        if session.audio_fault is not None:
            fault = session.audio_fault
            self.close()
            raise RtspError(fault)
        self._queue.clear()
        self._head = None
        self._undecodable = 0
        self._decoder = None
        self._g711 = ""
        # the feed learns the codec by FFmpeg's name (media.audio.AudioSource): G.711 of RTP's own
        # rate and channels (8 kHz mono) is passed on to listeners who take it, as PyAV's reader does;
        # any other G.711 is decoded, under a name that does not claim it can be passed on
        if track.codec in PASSED_CODECS and track.clock_rate == G711_CLOCK_RATE and track.channels == 1:
            self.codec_name, self._g711 = PASSED_CODECS[track.codec], track.codec
            return
        if track.codec in PASSED_CODECS:
            self.codec_name = f"{PASSED_CODECS[track.codec]}@{track.clock_rate}x{track.channels}"
        else:
            self.codec_name = track.codec
        if track.codec == "opus":
            return
        decoder = av.CodecContext.create(DECODERS[track.codec], "r")
        assert isinstance(decoder, av.AudioCodecContext)
        if track.codec in ("aac", "latm"):
            decoder.extradata = track.config
        else:
            decoder.sample_rate = track.clock_rate
            decoder.layout = "mono" if track.channels == 1 else "stereo"
        self._decoder = decoder
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_CLOCK_RATE)
        self._fifo = av.AudioFifo()

    def read(self) -> AudioChunk | None:
        session = self._session
        if session is None:
            raise RtspError("not open")
        sounds = session.sounds
        while not self._queue:
            try:
                session.wait(lambda: bool(sounds) or session.audio_fault is not None, self._interrupted)
            except EOFError:
                return None
            if self._interrupted.is_set():
                return None
            if session.audio_fault is not None:
                raise RtspError(session.audio_fault)
            with session.queues:
                if not sounds:
                    continue
                captured, timestamp, units = sounds.popleft()
                session.sound_bytes -= sum(len(u) for u in units) + 64 * len(units)
            self._take(captured, units)
        return self._queue.pop(0)

    def _take(self, captured: float, units: list[bytes]) -> None:
        if self._g711:  # G.711: as it is, decoded by the feed only for its Opus listeners
            for unit in units:
                self._queue.append(AudioChunk(captured, samples=len(unit), g711=unit, g711_codec=self._g711))
                captured += len(unit) / G711_CLOCK_RATE
            return
        if self._decoder is None:  # Opus: as it is
            for unit in units:
                samples = opus_samples(unit)
                self._queue.append(AudioChunk(captured, opus=unit, samples=samples))
                captured += samples / AUDIO_CLOCK_RATE
            return
        assert self._resampler is not None and self._fifo is not None
        fifo = self._fifo
        # the FIFO's head is this AU's capture time less what waits in front of it; after a gap (or
        # at the start) it follows the AU's time again
        head = captured - fifo.samples / AUDIO_CLOCK_RATE
        if self._head is None or abs(self._head - head) > 0.1:
            self._head = head
        for unit in units:
            try:
                frames = self._decoder.decode(av.Packet(unit))
            except (av.FFmpegError, ValueError) as exc:
                self.undecodable += 1
                self._undecodable += 1
                if self._undecodable > MAX_UNDECODABLE:
                    raise RtspError(f"the camera's {self.codec_name} sound does not decode ({exc})") from exc
                continue
            self._undecodable = 0
            for decoded in frames:
                for frame in self._resampler.resample(decoded):
                    frame.pts = None
                    fifo.write(frame)
        while fifo.samples >= FRAME_SAMPLES:
            cut = fifo.read(FRAME_SAMPLES)
            if cut is None:
                break
            cut.pts = None
            cut.time_base = fractions.Fraction(1, AUDIO_CLOCK_RATE)
            self._queue.append(AudioChunk(self._head, frame=cut))
            self._head += FRAME_SAMPLES / AUDIO_CLOCK_RATE

    def interrupt(self) -> None:
        """Stop for good (from any thread): a wait for the sound ends, and any later open raises at once."""
        self._interrupted.set()
        session = self._session
        if session is not None:
            session.wake()

    def close(self) -> None:
        session, self._session = self._session, None
        self._decoder = None
        self._queue.clear()
        if session is not None:
            release(session, interrupted=self._interrupted.is_set(), kind="audio")


class SessionAudioSource:
    """What `audio_source_factory` makes of an rtsp:// camera read over TCP: its sound from the
    picture's session (`RtspAudioSource`), or, when camtrack's reader cannot read the camera or its
    sound, from PyAV in a session of its own (said once in the log)."""

    def __init__(self, url: str, *, fallback: Any) -> None:
        self.url = url
        self.description = f"audio of {redact(url)}"
        self._own = RtspAudioSource(url)
        self._fallback_factory = fallback
        self._current: Any = self._own
        self._said = ""
        #: set by `interrupt`, for good: also stops a PyAV reader made after it
        self._stopped = threading.Event()

    def open(self) -> None:
        if self._stopped.is_set():  # (an interrupt that went to the PyAV reader of an earlier open)
            raise RtspError("stopped before it opened")
        self._current = self._own
        try:
            self._own.open()
        except RtspUnsupported as exc:
            if str(exc) != self._said:
                logger.info("%s: %s; reading the sound with PyAV in a session of its own", self.description, exc)
                self._said = str(exc)
            self._current = self._fallback_factory()
            if self._stopped.is_set():  # (an interrupt that went to camtrack's reader while this was made)
                self._current.interrupt()
            self._current.open()

    @property
    def codec_name(self) -> str:
        """The sound's codec by FFmpeg's name, as the reader in use says it (media.audio.AudioSource)."""
        return str(getattr(self._current, "codec_name", ""))

    def read(self) -> AudioChunk | None:
        chunk: AudioChunk | None = self._current.read()
        return chunk

    def interrupt(self) -> None:
        self._stopped.set()
        self._current.interrupt()

    def close(self) -> None:
        self._current.close()
