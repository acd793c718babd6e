"""WebSocket /ws/transcribe: real-time streaming and file transcription (protocol in SPEC.md).

The route is thin: it authenticates, parses commands (``streaming.protocol``), hands binary frames to a
``StreamingSession`` (real-time) or a bounded upload buffer (file mode), and always releases everything
in ``finally``: the session's worker task, a running file job, the connection slot.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from ..context import AppState
from ..audio import AudioDecodeError, AudioTooLong, decode_file
from ..engine import UnsupportedLanguageError
from ..state import QuotaExceeded, StateUnavailable
from ..streaming.formats import parse_format
from ..streaming.protocol import (
    AuthResult,
    ClearCommand,
    Connected,
    ErrorMessage,
    FileResult,
    PingCommand,
    Pong,
    ProtocolError,
    SegmentOut,
    StartCommand,
    Status,
    StopCommand,
    TranscribeFileCommand,
    TranscribeFileEndCommand,
    parse_auth,
    parse_command,
)
from ..streaming.protocol import from_event
from ..streaming.recogniser import EngineRecogniser
from ..streaming.session import SessionConfig, StreamingSession
from ..untrusted import dumps
from .live_socket import CLOSE_GOING_AWAY, LiveSocket

log = logging.getLogger(__name__)
router = APIRouter()

CLOSE_AUTH_FAILED = 4001
CLOSE_AUTH_TIMEOUT = 4002
CLOSE_AUTH_ERROR = 4003
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_QUOTA_EXCEEDED = 4029  # a per-key limit (streams, requests per minute, audio per day)
REVOKE_FLUSH_S = 10.0  # a revoked key's stream: how long its open utterance's final may take
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class _Closed(Exception):
    """The client went away."""


class Connection(LiveSocket):
    """State of one /ws/transcribe connection."""

    def __init__(self, ws: WebSocket, ctx: AppState, info) -> None:
        super().__init__(ws, ctx, info)
        self.file_buffer: Optional[bytearray] = None
        self.file_language: Optional[str] = None
        self.file_overflow = False
        self.file_task: Optional[asyncio.Task] = None
        self.debug_name = f"{time.strftime('%Y%m%d_%H%M%S')}_ws_{_SAFE.sub('_', info.id)}"

    # --- sending ----------------------------------------------------------------------------------
    async def send(self, message) -> None:
        """Send one protocol message; a client that is gone is not an error here."""
        await self.send_text(dumps(message.dump()))

    async def error(self, message: str, code: Optional[str] = None) -> None:
        await self.send(ErrorMessage(message=message, code=code))

    async def revoke(self) -> None:
        """Its API key was revoked: accept no more audio, send the open utterance's final, then
        ``KEY_REVOKED`` and close 4001. A file still being transcribed is abandoned."""
        await self._end_with("This API key has been revoked; the connection is closed.", "KEY_REVOKED",
                             CLOSE_AUTH_FAILED, "api key revoked")

    async def _end_with(self, message: str, code: str, close_code: int, reason: str) -> None:
        if self.revoked:
            return
        self.revoked = True
        await self.flush(REVOKE_FLUSH_S)
        task, self.file_task = self.file_task, None
        if task is not None and not task.done():
            task.cancel()
        self.file_buffer = None
        await self.error(message, code)
        await self.close(close_code, reason)

    async def evict(self) -> None:
        """Its slot went to a newer unauthenticated socket: clients that authenticate at once never lose a
        race against sockets that idle without a key (they would otherwise lock everyone out)."""
        await self.error("Closed without authentication: too many connections are waiting to authenticate; "
                         "send the API key right after connecting.", "AUTH_TIMEOUT")
        await self.close(CLOSE_AUTH_TIMEOUT, "auth timeout")

    async def receive(self, timeout: float) -> dict:
        message = await asyncio.wait_for(self.ws.receive(), timeout)
        if message["type"] == "websocket.disconnect":
            raise _Closed()
        return message

    # --- phases -----------------------------------------------------------------------------------
    async def authenticate(self) -> bool:
        settings = self.ctx.settings
        try:
            message = await self.receive(settings.auth_timeout_s)
        except asyncio.TimeoutError:
            await self.error(f"No authentication message within {settings.auth_timeout_s:g} s.", "AUTH_TIMEOUT")
            await self.close(CLOSE_AUTH_TIMEOUT, "auth timeout")
            return False
        text = message.get("text")
        try:
            if text is None:
                raise ProtocolError("Binary data before authentication.")
            auth = parse_auth(text)
        except ProtocolError:
            await self.error('The first message must be {"api_key": "sk-..."}.', "AUTH_ERROR")
            await self.close(CLOSE_AUTH_ERROR, "malformed auth message")
            return False
        state = self.ctx.state
        try:
            await self.ctx.ensure_started()
            info = await state.verify(auth.api_key)
            if info is not None:
                await state.check_request(info)
                await state.open_stream(info, self.info.id)
        except StateUnavailable as exc:
            await self.error(str(exc), "STATE_UNAVAILABLE")
            await self.close(CLOSE_TRY_AGAIN_LATER, "state backend unavailable")
            return False
        except QuotaExceeded as exc:
            await self.error(f"{exc} Retry after {exc.retry_after} s.", "QUOTA_EXCEEDED")
            await self.close(CLOSE_QUOTA_EXCEEDED, "quota exceeded")
            return False
        if info is None:
            await self.error("Invalid API key.", "AUTH_FAILED")
            await self.close(CLOSE_AUTH_FAILED, "invalid api key")
            return False
        self.key_info, self.key_digest = info, info.digest
        state.record(info.digest, requests=1, streams=1)
        await self.send(AuthResult(message="Authentication successful."))
        return True

    async def end_for_quota(self, reason: str) -> None:
        """The key's daily audio is used up: the open utterance's final is sent, then QUOTA_EXCEEDED and
        close 4029."""
        await self._end_with(f"{reason} The stream is closed after its last final.", "QUOTA_EXCEEDED",
                             CLOSE_QUOTA_EXCEEDED, "quota exceeded")

    async def serve(self) -> None:
        settings = self.ctx.settings
        if settings.auth_enabled:
            if not await self.authenticate():
                return
        if self.evicted:
            return
        if not self.ctx.stats.admit(self.info):
            await self.error(
                f"Server is at its connection limit ({self.ctx.stats.max_connections}); try again later.",
                "MAX_CONNECTIONS")
            await self.close(CLOSE_TRY_AGAIN_LATER, "server full")
            return
        engine = self.ctx.engine
        await self.send(Connected(
            message="Connected to the Whisper STT server. Send {\"command\": \"start\"} and stream audio, "
            "or {\"command\": \"transcribe_file\"} to send a file.",
            model=engine.model_name,
            device=engine.device,
            server_load=self.ctx.stats.load(),
        ))
        while True:
            try:
                message = await self.receive(settings.idle_timeout_s)
            except asyncio.TimeoutError:
                await self.error(f"Closing idle connection after {settings.idle_timeout_s:g} s.", "IDLE_TIMEOUT")
                await self.close(1000, "idle timeout")
                return
            if message.get("bytes") is not None:
                await self.on_binary(message["bytes"])
            elif message.get("text") is not None:
                await self.on_text(message["text"])

    async def on_binary(self, data: bytes) -> None:
        if self.revoked:
            return
        if self.file_buffer is not None:
            if self.file_overflow:
                return
            if len(self.file_buffer) + len(data) > self.ctx.settings.max_upload_bytes:
                self.file_overflow = True
                self.file_buffer = bytearray()
                await self.error(
                    f"File too large: the limit is {self.ctx.settings.max_upload_mb:g} MB. The upload is "
                    "discarded; send transcribe_file again to retry.", "FILE_TOO_LARGE")
                return
            self.file_buffer += data
            return
        if self.session is None:
            await self.error('Send {"command": "start"} (or "transcribe_file") before binary audio.', "NOT_STARTED")
            return
        await self.session.feed(data)

    async def on_text(self, text: str) -> None:
        if self.revoked:
            return
        try:
            command = parse_command(text)
        except ProtocolError as exc:
            await self.error(str(exc), exc.code)
            return
        if isinstance(command, StartCommand):
            await self.start(command)
        elif isinstance(command, StopCommand):
            if self.session is None:
                await self.send(Status(message="Not streaming; nothing to stop.", state="stopped"))
            else:
                self.session.stop()
                await self.session.drain()
                await self.end_session()
        elif isinstance(command, ClearCommand):
            if self.session is not None:
                self.session.clear()
                await self.session.drain()
            else:
                await self.send(Status(message="Nothing buffered.", state="cleared"))
        elif isinstance(command, TranscribeFileCommand):
            await self.begin_file(command)
        elif isinstance(command, TranscribeFileEndCommand):
            await self.end_file()
        elif isinstance(command, PingCommand):
            await self.send(Pong())

    # --- real-time --------------------------------------------------------------------------------
    async def start(self, command: StartCommand) -> None:
        try:
            language = self.ctx.engine.normalize_language(command.language)
            audio_format = parse_format(command.audio_format)
        except (UnsupportedLanguageError, ValueError) as exc:
            await self.error(str(exc), "BAD_MESSAGE")
            return
        if self.file_buffer is not None:  # binary frames are the file's until transcribe_file_end
            await self.error("A file upload is in progress: send transcribe_file_end first (until then binary "
                             "frames are the file's bytes).", "BUSY")
            return
        if self.session is not None:  # a second start: flush the old stream first
            self.session.stop()
            await self.session.drain()
            await self.end_session()
        settings = self.ctx.settings
        config = SessionConfig(
            language=language,
            audio_format=audio_format,
            silence_threshold=command.silence_threshold,
            max_buffer_s=settings.max_audio_buffer_s,
            debug_dir=settings.debug_dir if settings.debug else None,
            debug_name=self.debug_name,
            word_timestamps=command.word_timestamps,
        )
        self.session = StreamingSession(
            EngineRecogniser(self.ctx.engine, word_timestamps=command.word_timestamps),
            config, self.on_event, self.ctx.engine.run_vad,
            stats=self.info, first_utterance_id=self.next_utterance_id,
        )
        self.session.start()
        await self.send(Status(
            message="Streaming started. Send binary audio (16 kHz mono).",
            state="started",
            language=language or "auto",
            audio_format=audio_format,
            silence_threshold=command.silence_threshold,
        ))

    async def on_event(self, event) -> None:
        """The streaming core's events, as this protocol's messages."""
        message = from_event(event)
        if message is not None:
            await self.send(message)

    # --- file mode ----------------------------------------------------------------------------------
    async def begin_file(self, command: TranscribeFileCommand) -> None:
        try:
            self.file_language = self.ctx.engine.normalize_language(command.language)
        except UnsupportedLanguageError as exc:
            await self.error(str(exc), "BAD_MESSAGE")
            return
        if self.file_task is not None and not self.file_task.done():
            await self.error("A file is still being transcribed; wait for its file_result.", "BUSY")
            return
        if self.session is not None:  # else the stream's audio frames would be taken as the file's bytes
            await self.error('Real-time streaming is on: send {"command": "stop"} before transcribe_file.', "BUSY")
            return
        self.file_buffer = bytearray()
        self.file_overflow = False
        await self.send(Status(
            message="Ready for the file: send its bytes as binary frames, then transcribe_file_end.",
            state="receiving_file",
        ))

    async def end_file(self) -> None:
        data, self.file_buffer = self.file_buffer, None
        if data is None:
            await self.error('Send {"command": "transcribe_file"} before transcribe_file_end.', "NOT_STARTED")
            return
        if self.file_overflow:
            self.file_overflow = False
            await self.error("The file was too large and was discarded.", "FILE_TOO_LARGE")
            return
        if not data:
            await self.error("No file data received: send the file as binary frames before "
                             "transcribe_file_end.", "EMPTY_FILE")
            return
        await self.send(Status(message=f"Received {len(data)} bytes; transcribing.", state="transcribing_file"))
        self.file_task = asyncio.create_task(self.transcribe_file(bytes(data), self.file_language))

    async def transcribe_file(self, data: bytes, language: Optional[str]) -> None:
        ctx = self.ctx
        ctx.stats.total_requests += 1
        try:
            if ctx.settings.debug:
                await ctx.engine.run_decode(_save_upload, ctx.settings.debug_dir, self.debug_name, data)
            try:
                audio = await ctx.engine.run_decode(decode_file, data, ctx.max_audio_s)
            except AudioTooLong as exc:
                await self.error(str(exc), "AUDIO_TOO_LONG")
                return
            except AudioDecodeError as exc:
                await self.error(str(exc), "DECODE_ERROR")
                return
            if len(audio) == 0:
                await self.error("The file decoded to no audio samples.", "EMPTY_FILE")
                return
            result = await ctx.engine.transcribe(audio, language)
            self.info.transcriptions += 1
            self.info.audio_seconds += result.duration
            await self.send(FileResult(
                text=result.text,
                language=result.language,
                duration=result.duration,
                segments=[SegmentOut(**s.to_public()) for s in result.segments],
                language_probability=result.language_probability,
                processing_time=result.processing_time,
            ))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("file transcription over WebSocket failed")
            ctx.stats.total_errors += 1
            await self.error("Transcription failed on the server (it logged why).", "TRANSCRIPTION_FAILED")

    async def cleanup(self) -> None:
        await self.end_session()
        await self.release_key()
        task, self.file_task = self.file_task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self.file_buffer = None


def _save_upload(debug_dir: Path, name: str, data: bytes) -> None:
    debug_dir.mkdir(parents=True, exist_ok=True)
    (debug_dir / f"{name}_upload_{time.strftime('%H%M%S')}.bin").write_bytes(data)


@router.websocket("/ws/transcribe")
async def ws_transcribe(websocket: WebSocket) -> None:
    ctx: AppState = websocket.app.state.ctx
    await websocket.accept()
    if ctx.shutting_down:
        await websocket.close(code=CLOSE_GOING_AWAY, reason="server shutting down")
        return
    client = f"{websocket.client.host}:{websocket.client.port}" if websocket.client else "unknown"
    info = ctx.stats.open_connection(client, kind="websocket")
    while info is None:  # the budget for sockets waiting to authenticate is spent: the longest waiting goes
        # A real client authenticates within a round trip, so it is evicted only if the whole budget of
        # new sockets arrives in those milliseconds; sockets idling without a key are the ones that go.
        waiting = [c for c in ctx.websockets if not c.info.authenticated and c.info.id in ctx.stats.connections]
        if not waiting:
            break
        victim = min(waiting, key=lambda c: c.info.connected_at)
        victim.evicted = True
        ctx.stats.close_connection(victim.info)
        info = ctx.stats.open_connection(client, kind="websocket")
        await victim.evict()
    if info is None:
        try:
            await websocket.send_text(dumps(ErrorMessage(
                code="MAX_CONNECTIONS",
                message=f"Too many connections are waiting to authenticate ({ctx.stats.max_pending}); "
                "try again later.",
            ).dump()))
            await websocket.close(code=CLOSE_TRY_AGAIN_LATER, reason="server full")
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        return
    conn = Connection(websocket, ctx, info)
    ctx.websockets.add(conn)
    try:
        await conn.serve()
    except (_Closed, WebSocketDisconnect):
        pass
    except Exception:
        log.exception("WebSocket connection %s failed", info.id)
        ctx.stats.total_errors += 1
        await conn.close(1011, "internal error")
    finally:
        ctx.websockets.discard(conn)
        await conn.cleanup()
        ctx.stats.close_connection(info)
        log.info("WebSocket %s (%s) closed: %.1f s audio, %d transcriptions",
                 info.id, client, info.audio_seconds, info.transcriptions)
