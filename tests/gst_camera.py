"""What GStreamer's RTSP test cameras (tests/gst_rtsp_server.py, gst_rtsp_audio_server.py,
gst_rtsp_one_session_server.py, gst_onvif_backchannel_server.py) share: GStreamer initialised, and
a server on 127.0.0.1 serving one factory at /cam, its URL printed first (GstServers in
tests/test_real_rtsp.py waits for that line). Those scripts run with Debian's own Python
(/usr/bin/python3, where `gi` lives, not the venv's), which finds this module beside them (a
script's folder comes first on its sys.path): it imports nothing but `gi`."""

from typing import Any


def start_gst(*typelibs: str) -> None:
    """GStreamer and its RTSP server (and `typelibs`, e.g. "GstRtsp") from gi, initialised."""
    import gi

    for name in ("Gst", "GstRtspServer", *typelibs):
        gi.require_version(name, "1.0")
    from gi.repository import Gst

    Gst.init(None)


def serve(server: Any, factory: Any, port: str) -> None:
    """`factory` at rtsp://127.0.0.1:PORT/cam from `server` (set up otherwise by the caller), the URL
    on stdout, then the main loop for ever (the test kills the process)."""
    from gi.repository import GLib

    server.set_address("127.0.0.1")
    server.set_service(port)
    server.get_mount_points().add_factory("/cam", factory)
    server.attach(None)
    print(f"rtsp://127.0.0.1:{port}/cam", flush=True)
    GLib.MainLoop().run()
