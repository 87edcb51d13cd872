"""Worker processes that serve WebRTC viewers (`--workers N`): the main process keeps HTTP,
signaling, the cameras and their encoders, and streams each camera's packets once to each worker
that has viewers of it; a worker makes the peers (camtrack.outputs.webrtc.peer) and sends."""
