"""What GStreamer's RTSP test cameras (tests/gst_rtsp_server.py, gst_rtsp_audio_server.py,
gst_rtsp_one_session_server.py, gst_onvif_backchannel_server.py) share: GStreamer initialised, and
a server on 127.0.0.1 serving one factory at /cam, its URL printed first (GstServers in
tests/test_real_rtsp.py waits for that line). Those scripts run with Debian's own Python
(/usr/bin/python3, where `gi` lives, not the venv's), which finds this module beside them (a
script's folder comes first on its sys.path): it imports nothing but `gi`.

A client that sets up only some of a media's streams leaves the other payloaders linked to nothing:
their sources stop with "not-linked" and the media's status turns to error. On the ONVIF camera that
took a talk session down (hence its tees with allow-not-linked); on the others what was set up still
flows (camtrack with --audio off and PyAV's audio-only session: 0 failures in 40 sessions under two
busy loops), and no test's client sets up a subset of them (GST_DEBUG="rtsp*:3,basesrc:4" over the
tests that use them: no not-linked). A new test that does: add such a tee before each payloader."""

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
