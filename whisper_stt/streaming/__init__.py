"""Real-time transcription over WebSocket: format detection, endpointing, per-connection sessions, messages.

Data flows one way through this package::

    binary frames -> formats.AudioDecoder (float32 / pcm16, remainders kept)
                  -> session.StreamingSession (vad.StreamingVAD endpointing, partial / final policy)
                  -> Engine.transcribe (the shared model, off the event loop)
                  -> protocol messages (pydantic) -> JSON text frames
"""
