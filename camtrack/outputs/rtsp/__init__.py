"""RTSP output: every camera also served as rtsp://HOST:8554/NAME (camtrack.outputs.rtsp.server),
from the very packets WebRTC viewers get, for NVRs, VLC, ffmpeg and GStreamer."""

from .server import RtspCamera, RtspCameras, RtspServer, RtspSettings

__all__ = ["RtspCamera", "RtspCameras", "RtspServer", "RtspSettings"]
