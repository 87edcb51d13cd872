"""WebRTC viewers: the peer, its tracks, websocket signaling, WHEP, ICE settings, and every
aiortc/aioice private hook (hooks.py)."""
