"""A WebRTC viewer's sound: when its offer asks for audio (a recvonly or sendrecv audio m-line with
Opus) and the camera has sound, the answer carries a second track, of the camera's audio feed
(camtrack.media.audio: Opus encoded once for every listener, on the 48 kHz clock). It goes out
through the same machinery as the video: an `EncodedTrack`, the feed's fan-out and camtrack's RTP
sender, whose sender reports pair each stream's RTP time with the NTP time it was sent at, so the
browser lines the two up (lip-sync)."""

from __future__ import annotations

from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc import sdp as aiortc_sdp
from aiortc.rtcpeerconnection import is_codec_compatible
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters

from ...media.feeds import Transport
from ...media.packet import MediaKind
from .contract import CameraView
from .tracks import EncodedTrack

#: the audio codec every listener gets (the camera's sound encoded once, or its own Opus)
AUDIO_MIME = "audio/opus"


def opus_preferences() -> list[RTCRtpCodecCapability]:
    """The codec an audio transceiver may use: Opus, 48 kHz."""
    return [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == AUDIO_MIME]


def wants_audio(offer: aiortc_sdp.SessionDescription) -> bool:
    """Whether `offer` asks to receive audio in Opus (its first audio m-line recvonly or sendrecv)."""
    media = next((m for m in offer.media if m.kind == "audio"), None)
    if media is None or media.direction not in ("recvonly", "sendrecv"):
        return False
    local = [RTCRtpCodecParameters(mimeType=c.mimeType, clockRate=c.clockRate, channels=c.channels,
                                   parameters=c.parameters) for c in opus_preferences()]
    return any(is_codec_compatible(mine, theirs) for theirs in media.rtp.codecs for mine in local)


def offer_wants_audio(sdp: str) -> bool:
    """`wants_audio` of an offer that passed the checks (read_offer): parsed again."""
    try:
        return wants_audio(aiortc_sdp.SessionDescription.parse(sdp))
    except Exception:  # noqa: BLE001 - (it parsed once already)
        return False


def make_audio_track(camera: CameraView, transport: Transport) -> EncodedTrack | None:
    """A new track of `camera`'s sound for one listener, or None when the camera has none."""
    feed = camera.packets(MediaKind.AUDIO)
    return EncodedTrack(feed) if feed is not None else None


def offer_sends_audio(offer: aiortc_sdp.SessionDescription) -> bool:
    """Whether `offer`'s first audio m-line sends audio (sendrecv: a viewer who may talk back)."""
    media = next((m for m in offer.media if m.kind == "audio"), None)
    return media is not None and media.direction in ("sendrecv", "sendonly")


def add_audio(pc: RTCPeerConnection, track: EncodedTrack | None, hears: bool = False) -> None:
    """Send `track` on `pc` in Opus, and receive the viewer's sound too when it `hears` it (a camera
    it may talk to: talk.py); before the offer is applied (aiortc honours codec preferences only on
    a transceiver made then)."""
    direction = ("sendrecv" if hears else "sendonly") if track is not None else "recvonly"
    transceiver = pc.addTransceiver(track if track is not None else "audio", direction=direction)
    transceiver.setCodecPreferences(opus_preferences())
