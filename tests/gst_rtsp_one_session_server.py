"""A real RTSP camera that allows one session at a time, as many cheap IP cameras do: GStreamer's
rtsp-server (its session pool's max-sessions 1: a second SETUP is refused with 503) serving H.264
and a tone in AAC or G.711 µ-law, in one media. It prints each session it creates
("SESSION n"), so a test counts them. Picture and sound carry the same marks: for the first 100 ms
of every second of the stream's time the picture is white (elsewhere black) and the tone sounds
(elsewhere silence), both keyed on buffer timestamps (GstController), so lip-sync can be read from
what a viewer decodes. Run with Debian's own Python, where `gi` lives:

    /usr/bin/python3 tests/gst_rtsp_one_session_server.py PORT aac|pcmu
"""

import sys

AUDIO = {
    "aac": "audio/x-raw,rate=48000,channels=1 ! avenc_aac ! rtpmp4gpay name=pay1 pt=97",
    "pcmu": "audio/x-raw,rate=8000,channels=1 ! mulawenc ! rtppcmupay name=pay1",
}
#: seconds of marks laid out ahead (a test runs well under this)
MARKED_SECONDS = 600
#: seconds a session lives without a request (camtrack's keep-alive comes every half of it)
SESSION_TIMEOUT = 3


def main() -> None:
    from gst_camera import serve, start_gst

    start_gst("GstController")
    from gi.repository import GLib, Gst, GstController, GstRtspServer

    port, audio = sys.argv[1], sys.argv[2]
    server = GstRtspServer.RTSPServer()
    pool = server.get_session_pool()
    pool.set_max_sessions(1)

    def clean_up():
        pool.cleanup()  # (expired sessions free their place only when the pool is cleaned up)
        return True

    # a client that leaves without TEARDOWN (FFmpeg's probe sometimes: its session then kept the
    # one place for 60 s) frees it after SESSION_TIMEOUT s, as a camera's session expires
    GLib.timeout_add(500, clean_up)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        "( videotestsrc name=v is-live=true pattern=solid-color foreground-color=0xff000000 "
        "! video/x-raw,width=320,height=240,framerate=30/1 "
        "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bframes=0 "
        "! video/x-h264,profile=constrained-baseline ! rtph264pay name=pay0 pt=96 config-interval=-1 "
        "audiotestsrc name=a is-live=true wave=sine freq=1000 volume=0 samplesperbuffer=480 "
        f"! audioconvert ! audioresample ! {AUDIO[audio]} )")
    factory.set_shared(True)
    sessions = [0]

    def mark(element, prop, off, on):
        source = GstController.InterpolationControlSource()
        source.set_property("mode", GstController.InterpolationMode.NONE)
        element.add_control_binding(GstController.DirectControlBinding.new_absolute(element, prop, source))
        for second in range(MARKED_SECONDS):
            source.set(second * Gst.SECOND, on)
            source.set(second * Gst.SECOND + Gst.SECOND // 10, off)

    def configure(_factory, media):
        pipeline = media.get_element()
        mark(pipeline.get_by_name("v"), "foreground-color", float(0xFF000000), float(0xFFFFFFFF))
        mark(pipeline.get_by_name("a"), "volume", 0.0, 0.5)

    def new_session(_client, session):
        session.set_timeout(SESSION_TIMEOUT)
        session.set_property("extra-timeout", 0)  # (else 5 s more)
        sessions[0] += 1
        print(f"SESSION {sessions[0]}", flush=True)

    def connected(_server, client):
        client.connect("new-session", new_session)

    factory.connect("media-configure", configure)
    server.connect("client-connected", connected)
    serve(server, factory, port)


if __name__ == "__main__":
    main()
