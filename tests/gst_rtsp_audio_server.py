"""A real RTSP camera with sound for the tests: GStreamer's rtsp-server serving a live test picture
as H.264 and a 1 kHz tone in AAC (rtpmp4gpay), G.711 µ-law or A-law (20 ms packets), or Opus. Run with Debian's
own Python, where `gi` lives:

    /usr/bin/python3 tests/gst_rtsp_audio_server.py PORT aac|pcmu|pcma|opus [LOG]

With LOG (a file), the tone is 437 Hz (no 20 ms payload repeats the one before) and every audio RTP
payload the camera sends is written there as it goes out, a line each: the media's number (one per
RTSP session) and the payload in hex, so a test compares what a viewer got with what the camera sent.
"""

import sys

AUDIO = {
    "aac": "audio/x-raw,rate=48000,channels=1 ! avenc_aac ! rtpmp4gpay name=pay1 pt=97",
    "pcmu": "audio/x-raw,rate=8000,channels=1 ! mulawenc ! rtppcmupay name=pay1",
    "pcma": "audio/x-raw,rate=8000,channels=1 ! alawenc ! rtppcmapay name=pay1",
    "opus": "audio/x-raw,rate=48000,channels=1 ! opusenc ! rtpopuspay name=pay1 pt=98",
}


def main() -> None:
    from gst_camera import serve, start_gst

    start_gst()
    from gi.repository import Gst, GstRtspServer

    port, audio = sys.argv[1], sys.argv[2]
    log = open(sys.argv[3], "w", buffering=1) if len(sys.argv) > 3 else None  # noqa: SIM115
    freq = 437 if log is not None else 1000
    # (G.711 in 20 ms packets, as cameras send it: 160 samples at 8 kHz)
    samples = 160 if audio in ("pcmu", "pcma") else 1024
    server = GstRtspServer.RTSPServer()
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 "
        "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bframes=0 "
        "! video/x-h264,profile=constrained-baseline ! rtph264pay name=pay0 pt=96 config-interval=-1 "
        f"audiotestsrc is-live=true wave=sine freq={freq} volume=0.5 samplesperbuffer={samples} ! audioconvert ! "
        "audioresample ! "
        f"{AUDIO[audio]} )")
    factory.set_shared(False)  # (a session each: camtrack reads its picture and its sound in two)
    if log is not None:
        medias = [0]

        def payload(buffer) -> bytes:
            data = buffer.extract_dup(0, buffer.get_size())
            start = 12 + 4 * (data[0] & 0x0F)
            if data[0] & 0x10:  # (a header extension)
                start += 4 + 4 * int.from_bytes(data[start + 2:start + 4], "big")
            return data[start:]

        def configured(_factory, media) -> None:
            medias[0] += 1
            number = medias[0]
            pay = media.get_element().get_by_name("pay1")

            def probe(_pad, info) -> object:
                if info.type & Gst.PadProbeType.BUFFER_LIST:
                    found = info.get_buffer_list()
                    buffers = [found.get(i) for i in range(found.length())]
                else:
                    buffers = [info.get_buffer()]
                for buffer in buffers:
                    log.write(f"{number} {payload(buffer).hex()}\n")
                return Gst.PadProbeReturn.OK

            pay.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, probe)

        factory.connect("media-configure", configured)
    serve(server, factory, port)


if __name__ == "__main__":
    main()
