"""An ONVIF Profile T camera with a two-way audio back-channel for the tests: GStreamer's
RTSPOnvifServer serving H.264 and a G.711 µ-law tone, and taking G.711 µ-law back from a client that
asks for the back-channel (`Require: www.onvif.org/ver20/backchannel`). What it receives is measured
as it is decoded: one line `LEVEL <unix time> <rms, 0..1> <samples>` per buffer on stdout. Run with Debian's
own Python, where `gi` lives:

    /usr/bin/python3 tests/gst_onvif_backchannel_server.py PORT
"""

import array
import math
import sys
import time


def main() -> None:
    from gst_camera import serve, start_gst

    start_gst()
    from gi.repository import Gst, GstRtspServer

    port = sys.argv[1]
    server = GstRtspServer.RTSPOnvifServer()
    factory = GstRtspServer.RTSPOnvifMediaFactory()
    # A talk session sets up only the back-channel: the picture's and the sound's payloaders are then
    # linked to nothing, their sources stopped with "not-linked" and, when that error was handled
    # before the back-channel's first packet (1 session in 4 on a loaded machine), the media never
    # decoded a packet of the session. A tee that allows not-linked keeps the sources running, as a
    # real camera does for streams a client did not set up.
    factory.set_launch(
        "( videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=15/1 "
        "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! tee allow-not-linked=true "
        "! rtph264pay name=pay0 pt=96 "
        "audiotestsrc is-live=true wave=sine freq=440 volume=0.3 ! audio/x-raw,rate=8000,channels=1 "
        "! mulawenc ! tee allow-not-linked=true ! rtppcmupay name=pay1 )")
    factory.set_backchannel_launch(
        "( capsfilter caps=\"application/x-rtp, media=audio, payload=0, clock-rate=8000, encoding-name=PCMU\" "
        "name=depay_backchannel ! rtppcmudepay ! mulawdec ! audioconvert "
        "! audio/x-raw,format=S16LE ! identity name=heard signal-handoffs=true ! fakesink async=false )")
    factory.set_shared(False)
    factory.set_media_gtype(GstRtspServer.RTSPOnvifMedia)

    def on_media(_factory, media) -> None:
        heard = media.get_element().get_by_name("heard")
        if heard is None:
            return

        def handoff(_element, buffer) -> None:
            ok, info = buffer.map(Gst.MapFlags.READ)
            if not ok:
                return
            try:
                samples = array.array("h", bytes(info.data))
            finally:
                buffer.unmap(info)
            rms = math.sqrt(sum(v * v for v in samples) / len(samples)) / 32768 if samples else 0.0
            print(f"LEVEL {time.time():.4f} {rms:.4f} {len(samples)}", flush=True)

        heard.connect("handoff", handoff)

    factory.connect("media-configure", on_media)
    serve(server, factory, port)


if __name__ == "__main__":
    main()
