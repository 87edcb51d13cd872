"""What moves and how it fans out: frames, encoded packets, the capture thread, the stream, the
encoders and the numbered ring. Imports no protocol library (aiohttp, aiortc, aioice)."""
