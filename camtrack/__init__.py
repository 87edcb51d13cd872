"""camtrack: stream cameras to web browsers over WebRTC."""

from .app import create_app
from .config import Config

__all__ = ["Config", "create_app"]
__version__ = "0.1.0"
