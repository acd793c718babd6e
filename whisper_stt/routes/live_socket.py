"""What every streaming WebSocket connection holds, whatever its protocol (the original /ws/transcribe,
OpenAI Realtime, Deepgram live): its slot in the connection budget, its key, its streaming session, one
lock for sending, and the server's handles on it (flush, shutdown, end of session, release of the key's
stream slot). Each protocol adds how it authenticates, parses and words its messages.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from ..streaming.session import StreamingSession

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001


class LiveSocket:
    """One streaming connection: the state the rest of the server reads in ``ctx.websockets``."""

    def __init__(self, ws: WebSocket, ctx: Any, info) -> None:
        self.ws = ws
        self.ctx = ctx
        self.info = info  # the connection budget's entry
        self.session: Optional[StreamingSession] = None
        self.next_utterance_id = 1
        self.key_digest: Optional[str] = None  # hash of the API key it authenticated with (revocation)
        self.key_info: Any = None  # the state backend's record of that key, with its limits, where it has one
        self.recorded_audio_s = 0.0  # audio already counted in the key's usage
        self.quota_ended = False
        self.revoked = False  # revoked or out of quota: no more audio is taken
        self.evicted = False  # its unauthenticated slot went to a newer socket
        self._send_lock = asyncio.Lock()

    async def send_text(self, text: str) -> None:
        """Send one text frame; a client that is gone is not an error here."""
        async with self._send_lock:
            if self.ws.application_state != WebSocketState.CONNECTED:
                return
            try:
                await self.ws.send_text(text)
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        async with self._send_lock:
            if self.ws.application_state == WebSocketState.CONNECTED:
                try:
                    await self.ws.close(code=code, reason=reason)
                except (RuntimeError, OSError):
                    pass

    async def flush(self, grace: float) -> None:
        """The open utterance becomes a final (within ``grace``); no more audio is taken by the session."""
        if self.session is not None:
            self.session.stop()
            try:
                await asyncio.wait_for(self.session.drain(), grace)
            except asyncio.TimeoutError:
                pass

    async def shutdown(self, grace: float) -> None:
        """The server is stopping: send the open utterance's final (within ``grace``), close with 1001."""
        await self.flush(grace)
        await self.close(CLOSE_GOING_AWAY, "server shutting down")

    async def end_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            self.next_utterance_id = session.next_utterance_id
            await session.close()

    async def release_key(self) -> None:
        """The connection is over: its audio is counted against its key and its stream slot is freed."""
        if self.key_info is None:
            return
        self.ctx.record_stream_audio(self)
        try:
            await self.ctx.state.close_stream(self.key_info, self.info.id)
        except Exception:
            log.warning("could not release the stream slot of %s", self.info.id, exc_info=True)
