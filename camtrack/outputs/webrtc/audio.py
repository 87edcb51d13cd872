"""A WebRTC viewer's sound: when its offer asks for audio (a recvonly or sendrecv audio m-line with
Opus, or with the camera's own G.711) and the camera has sound, the answer carries a second track,
of one of the camera's audio feeds (camtrack.media.audio): its own G.711 (PCMU, PCMA) passed through
untouched when the offer takes that codec, else Opus (the camera's own, or encoded once for every
such listener, on the 48 kHz clock). It goes out through the same machinery as the video: an
`EncodedTrack`, the feed's fan-out and camtrack's RTP sender, whose sender reports pair each
stream's RTP time with its capture time, so the browser lines the two up (lip-sync)."""

from __future__ import annotations

from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc import sdp as aiortc_sdp
from aiortc.rtcpeerconnection import is_codec_compatible
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters

from ...media.audio import PASSED_CODECS, AudioFeed
from ...media.feeds import Transport
from ...media.packet import MediaKind
from ...media.tiers import MAIN, Tier
from .contract import CameraView
from .tracks import EncodedTrack

#: the audio codecs a listener may get, by camtrack's name: Opus (every browser has it), and a
#: camera's own G.711 passed through
AUDIO_MIMES = {"opus": "audio/opus", "pcmu": "audio/PCMU", "pcma": "audio/PCMA"}
#: the codec every listener can get (the camera's sound encoded once, or its own Opus)
AUDIO_MIME = AUDIO_MIMES["opus"]


def codec_preferences(codec: str = "opus") -> list[RTCRtpCodecCapability]:
    """The codec an audio transceiver may use: `codec` (opus, pcmu, pcma) at its clock rate."""
    mime = AUDIO_MIMES[codec].lower()
    return [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == mime]


def opus_preferences() -> list[RTCRtpCodecCapability]:
    """The codec an audio transceiver may use: Opus, 48 kHz."""
    return codec_preferences("opus")


def offered_codecs(offer: aiortc_sdp.SessionDescription) -> list[str]:
    """The audio codecs camtrack may send that `offer` takes (opus, pcmu, pcma; in camtrack's order),
    when its first audio m-line is recvonly or sendrecv; else none."""
    media = next((m for m in offer.media if m.kind == "audio"), None)
    if media is None or media.direction not in ("recvonly", "sendrecv"):
        return []
    taken = []
    for name in AUDIO_MIMES:
        local = [RTCRtpCodecParameters(mimeType=c.mimeType, clockRate=c.clockRate, channels=c.channels,
                                       parameters=c.parameters) for c in codec_preferences(name)]
        if any(is_codec_compatible(mine, theirs) for theirs in media.rtp.codecs for mine in local):
            taken.append(name)
    return taken


def wants_audio(offer: aiortc_sdp.SessionDescription) -> bool:
    """Whether `offer` asks to receive audio in a codec camtrack may send (its first audio m-line
    recvonly or sendrecv, with Opus or G.711)."""
    return bool(offered_codecs(offer))


def offer_wants_audio(sdp: str) -> bool:
    """`wants_audio` of an offer that passed the checks (read_offer): parsed again."""
    try:
        return wants_audio(aiortc_sdp.SessionDescription.parse(sdp))
    except Exception:  # noqa: BLE001 - (it parsed once already)
        return False


async def audio_tier(camera: CameraView, offer: aiortc_sdp.SessionDescription) -> Tier | None:
    """Which of `camera`'s audio feeds a listener whose offer is `offer` gets: the camera's own G.711
    (`Tier(codec="pcmu")`, "pcma") when the offer takes that codec (learning the camera's codec
    first if its stream was never opened: at most a few seconds), else Opus (MAIN) when the offer
    takes Opus; None when the camera has no sound or the offer takes none of these."""
    offered = offered_codecs(offer)
    feed = camera.packets(MediaKind.AUDIO)
    if feed is None or not offered:
        return None
    if isinstance(feed, AudioFeed) and any(codec in PASSED_CODECS for codec in offered):
        own = await feed.learn_codec()
        if own in offered and camera.packets(MediaKind.AUDIO, Tier(codec=own)) is not None:
            return Tier(codec=own)
    return MAIN if "opus" in offered else None


async def audio_tier_of(camera: CameraView, sdp: str) -> Tier | None:
    """`audio_tier` of an offer that passed the checks (read_offer): parsed again."""
    try:
        offer = aiortc_sdp.SessionDescription.parse(sdp)
    except Exception:  # noqa: BLE001 - (it parsed once already)
        return None
    return await audio_tier(camera, offer)


async def make_audio_track(camera: CameraView, transport: Transport,
                           offer: aiortc_sdp.SessionDescription) -> EncodedTrack | None:
    """A new track of `camera`'s sound for one listener whose offer is `offer` (its codec:
    `audio_tier`), or None when the camera has none it takes."""
    tier = await audio_tier(camera, offer)
    feed = camera.packets(MediaKind.AUDIO, tier) if tier is not None else None
    return EncodedTrack(feed) if feed is not None else None


def offer_sends_audio(offer: aiortc_sdp.SessionDescription) -> bool:
    """Whether `offer`'s first audio m-line sends audio (sendrecv: a viewer who may talk back)."""
    media = next((m for m in offer.media if m.kind == "audio"), None)
    return media is not None and media.direction in ("sendrecv", "sendonly")


def add_audio(pc: RTCPeerConnection, track: EncodedTrack | None, hears: bool = False) -> None:
    """Send `track` on `pc` in its feed's codec (Opus, or the camera's own G.711), and receive the
    viewer's sound too when it `hears` it (a camera it may talk to: talk.py; in the same codec);
    before the offer is applied (aiortc honours codec preferences only on a transceiver made then)."""
    direction = ("sendrecv" if hears else "sendonly") if track is not None else "recvonly"
    codec = track.encoder.codec.codec if track is not None else "opus"
    transceiver = pc.addTransceiver(track if track is not None else "audio", direction=direction)
    transceiver.setCodecPreferences(codec_preferences(codec if codec in AUDIO_MIMES else "opus"))
