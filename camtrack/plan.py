"""A camera's plan: its source resolved, the mode chosen with its reason, and what probing the
source found. One function makes it, for the command line (before the server starts) and for
`create_app` (for a Config whose cameras were not planned yet); the pipeline is built from it
(camtrack.pipeline)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .config import CameraConfig, Config
from .media.packet import CodecInfo
from .redaction import scrub, with_decoded
from .sources import plan_probe, resolve_auto, url_secrets

logger = logging.getLogger(__name__)

#: what a camera's pipeline may be: its own H.264 passed through, decoded and encoded once for every
#: viewer, or (--encoder per-viewer) its pictures encoded by each viewer's own encoder
MODES = ("passthrough", "transcode", "per-viewer")


#: why a camera that could pass its H.264 through is transcoded (`--mode auto`)
TRANSCODED_FOR_PROCESSING = ("a --process function may draw on its pictures, which must then be encoded "
                             "(--mode passthrough keeps the camera's own H.264: the function then gives data only)")
#: ... and for the built-ins that draw (camtrack.processing): masks (a camera asked for passthrough with
#: masks is refused by its settings), the overlay. (--motion gives data only: like a data function on a
#: passed-through camera, it reads pictures decoded for it)
TRANSCODED_FOR_MASKS = "privacy masks black out parts of its pictures, which must then be encoded"
TRANSCODED_FOR_OVERLAY = "--overlay draws on its pictures, which must then be encoded"


@dataclass(frozen=True)
class CameraPlan:
    """What a camera's pipeline is built from."""

    #: the source spec, with `auto` resolved
    source: str
    #: one of MODES
    mode: str
    #: why that mode: "asked for", or what `auto` found ("it is H.264 without B-frames", ...), with
    #: the source's credentials taken out (it is shown in /api/cameras)
    reason: str
    #: what the source carries, when the plan probed it (`auto` on a file or stream), else None
    codec: CodecInfo | None = None
    #: the camera's own second stream that serves its low tier as it is (--low-source, probed: H.264
    #: without B-frames), else None (the low tier is encoded)
    low_source: str | None = None

    @property
    def setting(self) -> str:
        """The mode as a camera's settings say it (`passthrough` or `transcode`)."""
        return "passthrough" if self.mode == "passthrough" else "transcode"


def plan_camera(settings: CameraConfig, config: Config, *, strict: bool = False) -> CameraPlan:
    """The plan of the camera `settings` in a server of `config`: `auto` source and mode settled
    (the mode's `auto` probes the source: milliseconds for a file, up to 5 s for a stream that does
    not answer, so an embedding program calls create_app before its event loop serves anything).
    OSError, ValueError or SourceError when the source cannot even be looked at; with `strict` (the
    command line's) also when it is not there or does not answer (camtrack.sources.plan_probe)."""
    source = resolve_auto(settings.source)
    mode, why, codec = plan_probe(source, settings.mode, config.encoder, settings.codec, settings.rtsp_transport,
                                  settings.input_format, settings.width, settings.height, settings.fps,
                                  strict=strict)
    # (a probe's error may quote the source's URL, credentials and all)
    why = scrub(why, with_decoded(url_secrets(source)))
    if mode == "passthrough" and settings.masks:
        mode, why = "transcode", TRANSCODED_FOR_MASKS
    if mode == "passthrough" and settings.mode == "auto" and (settings.process or
                                                              settings.process_function is not None):
        # (asked for, passthrough stays: the function reads pictures decoded for it, gives data only)
        mode, why = "transcode", TRANSCODED_FOR_PROCESSING
    if mode == "passthrough" and settings.overlay:
        mode, why = "transcode", TRANSCODED_FOR_OVERLAY
        if settings.mode != "auto":
            logger.info("camera %s: transcoding (%s)", settings.name, why)
    if settings.mode == "auto":
        logger.info("camera %s: %s (%s)", settings.name,
                    "passing its H.264 through" if mode == "passthrough" else "transcoding", why)
    if mode != "passthrough" and config.encoder != "shared":
        mode = "per-viewer"
    return CameraPlan(source, mode, why, codec, plan_low_source(settings, mode, strict=strict))


def plan_low_source(settings: CameraConfig, mode: str, *, strict: bool = False) -> str | None:
    """The camera's --low-source when it can serve the low tier as it is: probed like the camera's
    own source (`strict`: one that does not answer is a SourceError saying why); one that is not
    H.264 without B-frames (or a camera with no low tier, or whose viewers encode for themselves)
    gives None, said in the log: the low tier is then encoded."""
    low = settings.low_source
    if low is None:
        return None
    shown = scrub(low, with_decoded(url_secrets(low)))
    if mode == "per-viewer" or not settings.low_scale:
        logger.warning("camera %s: --low-source %s is not used (%s)", settings.name, shown,
                       "each viewer's own encoder" if mode == "per-viewer" else "--low-scale 0: no low tier")
        return None
    low_mode, why, _ = plan_probe(low, "auto", "shared", "h264", settings.rtsp_transport, "raw", settings.width,
                                  settings.height, settings.fps, strict=strict)
    if low_mode != "passthrough":
        logger.warning("camera %s: its --low-source %s cannot be passed through (%s): encoding its low tier "
                       "instead", settings.name, shown, scrub(why, with_decoded(url_secrets(low))))
        return None
    logger.info("camera %s: its low tier is its own second stream %s, passed through", settings.name, shown)
    return low
