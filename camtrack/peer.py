"""Answering a viewer's SDP offer: the codec it gets and the checks the offer must pass."""

from __future__ import annotations

from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.mediastreams import MediaStreamTrack

#: what each --codec name sends; H.264 is constrained baseline so Safari plays it
CODEC_MIME = {"h264": "video/H264", "vp8": "video/VP8"}
H264_PROFILE = "42e01f"


class OfferError(ValueError):
    """An offer this server cannot answer; the message says why."""


def codec_preferences(codec: str) -> list[RTCRtpCodecCapability]:
    """The codecs a viewer's transceiver may use for `codec` (h264 or vp8), with RTX."""
    mime = CODEC_MIME[codec].lower()
    chosen = []
    for capability in RTCRtpSender.getCapabilities("video").codecs:
        name = capability.mimeType.lower()
        if name == mime:
            if codec == "h264" and (
                capability.parameters.get("profile-level-id") != H264_PROFILE
                or str(capability.parameters.get("packetization-mode")) != "1"
            ):
                continue
            chosen.append(capability)
        elif name == "video/rtx":
            chosen.append(capability)
    return chosen


def check_offer(sdp: str, codec: str) -> None:
    """Raise OfferError unless `sdp` parses and asks to receive video in `codec`."""
    try:
        description = aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as exc:  # noqa: BLE001 - the parser raises many kinds
        raise OfferError(f"the SDP offer does not parse: {exc or type(exc).__name__}") from None
    video = [m for m in description.media if m.kind == "video"]
    if not video:
        raise OfferError("the offer has no video m-line; add a recvonly video transceiver")
    media = video[0]
    if media.direction not in ("recvonly", "sendrecv"):
        raise OfferError(f"the offer's video is {media.direction}; it must be recvonly or sendrecv")
    mime = CODEC_MIME[codec].lower()
    if not any(c.mimeType.lower() == mime for c in media.rtp.codecs):
        raise OfferError(f"the offer has no {CODEC_MIME[codec][6:]} codec; this server sends {codec} only")


def forward_keyframe_requests(pc: RTCPeerConnection, track: MediaStreamTrack) -> None:
    """Pass the viewer's PLI/FIR to `track.request_keyframe()`.

    aiortc turns PLI/FIR into a flag of its own encoder, which pre-encoded packets never
    see; the sender's `_send_keyframe` hook is where the request surfaces.
    """
    request = getattr(track, "request_keyframe", None)
    if request is None:
        return
    for sender in pc.getSenders():
        if sender.track is track:
            original = sender._send_keyframe

            def send_keyframe() -> None:
                original()
                request()

            sender._send_keyframe = send_keyframe  # type: ignore[method-assign]


async def answer_offer(pc: RTCPeerConnection, sdp: str, track: MediaStreamTrack, codec: str) -> str:
    """Attach `track` to `pc`, answer `sdp` with `codec` only, and return the answer SDP.

    The sending transceiver is created before the remote description is applied: aiortc
    honours codec preferences only then, not on a transceiver made from the offer.
    """
    check_offer(sdp, codec)
    transceiver = pc.addTransceiver(track, direction="sendonly")
    transceiver.setCodecPreferences(codec_preferences(codec))
    forward_keyframe_requests(pc, track)
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    except Exception as exc:  # noqa: BLE001 - aiortc raises ValueError, OperationError, ...
        raise OfferError(f"the offer was refused: {exc or type(exc).__name__}") from None
    answer = await pc.createAnswer()
    await pc.setLocalDescription(answer)
    return pc.localDescription.sdp
