"""A real RTSP server for the tests: GStreamer's rtsp-server (Debian's python3-gi and
gir1.2-gst-rtsp-server-1.0, installed by .ci/run), serving a live test picture as H.264 from
x264enc, a keyframe every 4 s. Run with Debian's own Python, where `gi` lives:

    /usr/bin/python3 tests/gst_rtsp_server.py PORT PROFILE BFRAMES [basic|digest USER:PASSWORD]

With the last two, only that user may watch, authenticated by that method.
"""

import sys


def main() -> None:
    from gst_camera import serve, start_gst

    start_gst("GstRtsp")
    from gi.repository import Gst, GstRtsp, GstRtspServer

    port, profile, bframes = sys.argv[1], sys.argv[2], sys.argv[3]
    server = GstRtspServer.RTSPServer()
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 "
        f"! x264enc tune=zerolatency speed-preset=veryfast key-int-max=120 bframes={bframes} "
        f"! video/x-h264,profile={profile} ! rtph264pay name=pay0 pt=96 config-interval=-1 )")
    factory.set_shared(True)
    if len(sys.argv) > 5:
        method, (user, _, password) = sys.argv[4], sys.argv[5].partition(":")
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "viewer")
        if method == "digest":
            auth.add_digest(user, password, token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        else:
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
        server.set_auth(auth)
        factory.add_role_from_structure(Gst.Structure.from_string(
            "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true")[0])
    serve(server, factory, port)


if __name__ == "__main__":
    main()
