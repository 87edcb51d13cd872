"""WebRTC viewers: the peer, its tracks, websocket signaling, WHEP, ICE settings (ice.py, the
offered addresses in addresses.py, the shared port in udpmux.py), the ICE gate (icegate.py,
icelimits.py), the silence clock (hearing.py), RTCP limits (rtcp.py) and camtrack's RTP sender
(rtpsend.py). What they need of aiortc/aioice internals is in camtrack.seams."""
