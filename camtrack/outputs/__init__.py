"""The ways out: WebRTC (websocket signaling, WHEP), MJPEG and snapshots, Janus, metrics."""
