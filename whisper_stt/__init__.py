"""Self-hosted speech-to-text server on faster-whisper (REST + WebSocket)."""

__version__ = "1.0.0"
