"""Deepgram live transcription: ``GET /v1/listen`` (WebSocket), a thin adapter over the streaming core.

Binary frames are audio; text frames are the control messages ``KeepAlive``, ``Finalize`` and
``CloseStream``. Server messages: ``Results`` (interim ones while the person speaks with
``interim_results=true``; ``is_final`` ones with word timings; ``speech_final`` when endpointing saw the
speaker pause), ``SpeechStarted`` (``vad_events=true``), ``UtteranceEnd`` (``utterance_end_ms``) and
``Metadata`` when the stream closes. Query parameters are checked at the handshake: a bad value is an HTTP
400 there, as Deepgram answers; a bad key is a 401.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from datetime import datetime, timezone
from typing import Any, Optional

import numpy as np
from fastapi import APIRouter, WebSocket
from starlette.responses import JSONResponse

from ..audio import SAMPLE_RATE
from ..engine import UnsupportedLanguageError
from ..streaming import events as ev
from ..streaming.codecs import MAX_RATE, MIN_RATE, PCMStream
from ..streaming.protocol import SILENCE_MAX_S, SILENCE_MIN_S
from ..streaming.recogniser import EngineRecogniser
from ..streaming.session import SessionConfig, StreamingSession
from ..untrusted import InvalidJSON, echo, parse_json
from .stream_socket import CLOSE_NORMAL, StreamSocket, run_socket

router = APIRouter()

ENCODINGS = {"linear16": "pcm16", "mulaw": "mulaw", "alaw": "alaw"}
DEFAULT_ENDPOINTING_MS = 500  # when absent (Deepgram's 10 ms would end an utterance at every word gap)
IGNORED = {"model", "version", "punctuate", "smart_format", "numerals", "profanity_filter", "diarize",
           "diarize_model", "dictation", "filler_words", "keywords", "keyterm", "mip_opt_out", "multichannel",
           "redact", "replace", "search", "tag", "tier", "extra", "no_delay", "callback", "callback_method",
           "detect_entities", "language_hint"}
_WAV_FORMATS = {1: "pcm16", 6: "alaw", 7: "mulaw"}


class BadParams(ValueError):
    pass


def _flag(params, name: str, default: bool) -> bool:
    value = params.get(name)
    if value is None:
        return default
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise BadParams(f"{name} must be true or false, not {echo(value)}.")


def _int(params, name: str, low: int, high: int) -> Optional[int]:
    value = params.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise BadParams(f"{name} must be an integer, not {echo(value)}.") from None
    if not low <= number <= high:
        raise BadParams(f"{name} must be in {low}-{high}.")
    return number


class ListenOptions:
    """The query string, checked."""

    def __init__(self, params, engine) -> None:
        unknown = [k for k in params if k not in IGNORED and k not in {
            "language", "encoding", "sample_rate", "channels", "interim_results", "endpointing",
            "utterance_end_ms", "vad_events", "access_token", "token"}]
        if unknown:
            raise BadParams(f"Unsupported query parameter {echo(unknown[0])}.")
        language = params.get("language")
        try:
            self.language = engine.normalize_language(language.split("-")[0] if language else None)
        except UnsupportedLanguageError as exc:
            if language not in ("multi",):
                raise BadParams(str(exc)) from None
            self.language = None
        encoding = params.get("encoding")
        if encoding is not None and encoding not in ENCODINGS:
            raise BadParams(f"Unsupported encoding {echo(encoding)}: use linear16, mulaw or alaw "
                            "(or none for a WAV stream).")
        self.encoding = ENCODINGS.get(encoding) if encoding else None
        self.sample_rate = (_int(params, "sample_rate", MIN_RATE, MAX_RATE)
                            or (8000 if self.encoding in ("mulaw", "alaw") else SAMPLE_RATE))
        channels = _int(params, "channels", 1, 8)
        if channels not in (None, 1):
            raise BadParams("Only mono audio is supported (channels=1).")
        self.interim_results = _flag(params, "interim_results", False)
        endpointing = params.get("endpointing")
        if endpointing is not None and endpointing.lower() == "false":
            self.endpointing_s = SILENCE_MAX_S
        else:
            ms = _int(params, "endpointing", 0, 60000)
            self.endpointing_s = min(max((DEFAULT_ENDPOINTING_MS if ms is None else ms) / 1000, SILENCE_MIN_S),
                                     SILENCE_MAX_S)
        self.utterance_end_s = (_int(params, "utterance_end_ms", 1000, 60000) or 0) / 1000 or None
        self.vad_events = _flag(params, "vad_events", False)
        self.model = (params.get("model") or "whisper")[:64]


def _parse_wav_header(data: bytes) -> Optional[tuple[str, int, int, int]]:
    """(encoding, rate, channels, data offset) of a WAV header, or None when more bytes are needed."""
    pos = 12
    fmt = None
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if chunk == b"fmt ":
            if pos + 8 + 16 > len(data):
                return None
            code, channels, rate = struct.unpack("<HHI", data[pos + 8:pos + 16])
            bits = struct.unpack("<H", data[pos + 22:pos + 24])[0]
            if code == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's first two bytes
                code = struct.unpack("<H", data[pos + 32:pos + 34])[0] if pos + 34 <= len(data) else 0
            if code not in _WAV_FORMATS or (code == 1 and bits != 16):
                raise BadParams("Unsupported WAV audio: use 16-bit PCM, mu-law or A-law.")
            if not MIN_RATE <= rate <= MAX_RATE:
                raise BadParams(f"Unsupported WAV sample rate {rate} Hz: {MIN_RATE}-{MAX_RATE}.")
            fmt = (_WAV_FORMATS[code], rate, channels)
        elif chunk == b"data":
            if fmt is None:
                raise BadParams("WAV data before its format chunk.")
            return (*fmt, pos + 8)
        pos += 8 + size + (size & 1)
    return None


class ListenSocket(StreamSocket):
    name = "deepgram"

    def __init__(self, ws: WebSocket, ctx: Any, info, options: ListenOptions) -> None:
        super().__init__(ws, ctx, info)
        self.options = options
        self.request_id = str(uuid.uuid4())
        self.pcm: Optional[PCMStream] = None
        self._head = b""  # bytes before the WAV header is understood (no encoding given)
        self._received_s = 0.0  # stream time of the audio received
        self._finalizing = False
        self._last_word_end: Optional[float] = None  # for UtteranceEnd
        self._sha = hashlib.sha256()
        self._created = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        self._model_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, ctx.engine.model_name))

    # --- sending ----------------------------------------------------------------------------------
    async def error(self, message: str, code: str, **extra) -> None:
        await self.send_json({"type": "Error", "variant": "error", "code": code, "description": message,
                              "message": message})

    def _metadata(self) -> dict:
        return {"request_id": self.request_id, "model_uuid": self._model_uuid,
                "model_info": {"name": self.ctx.engine.model_name, "version": "whisper",
                               "arch": "whisper"}}

    async def on_open(self) -> None:
        opts = self.options
        config = SessionConfig(
            language=opts.language, audio_format="float32", silence_threshold=opts.endpointing_s,
            max_buffer_s=self.ctx.settings.max_audio_buffer_s, word_timestamps=True,
            debug_dir=self.ctx.settings.debug_dir if self.ctx.settings.debug else None,
            debug_name=f"deepgram_{self.info.id}", partials=opts.interim_results,
        )
        self.session = StreamingSession(
            EngineRecogniser(self.ctx.engine, word_timestamps=True), config, self.on_event,
            self.ctx.engine.run_vad, stats=self.info,
        )
        self.session.start()
        if opts.encoding is not None:
            self.pcm = PCMStream(opts.encoding, opts.sample_rate)  # type: ignore[arg-type]

    # --- client messages ----------------------------------------------------------------------------
    async def on_binary(self, data: bytes) -> None:
        if not data:
            return
        self._sha.update(data)
        if self.pcm is None:
            self._head += data
            if len(self._head) < 12:
                return
            if self._head[:4] != b"RIFF" or self._head[8:12] != b"WAVE":
                # No encoding and no WAV header: take it as 16-bit PCM at sample_rate (16 kHz by default).
                self.pcm = PCMStream("pcm16", self.options.sample_rate)
                data, self._head = self._head, b""
            else:
                try:
                    header = _parse_wav_header(self._head)
                except BadParams as exc:
                    await self.error(str(exc), "UNSUPPORTED_AUDIO")
                    self._head = b""
                    return
                if header is None:
                    if len(self._head) > 65536:
                        await self.error("No WAV data chunk in the first 64 KiB.", "UNSUPPORTED_AUDIO")
                        self._head = b""
                    return
                encoding, rate, channels, offset = header
                if channels != 1:
                    await self.error("Only mono WAV audio is supported.", "UNSUPPORTED_AUDIO")
                    self._head = b""
                    return
                self.pcm = PCMStream(encoding, rate)  # type: ignore[arg-type]
                data, self._head = self._head[offset:], b""
        samples = self.pcm.feed(data)
        self._received_s += len(samples) / SAMPLE_RATE
        await self.session.feed_samples(samples)
        await self._maybe_utterance_end()

    async def on_text(self, text: str) -> None:
        try:
            message = parse_json(text)
        except InvalidJSON as exc:
            await self.error(f"Control messages must be JSON objects; this is {exc}.", "INVALID_JSON")
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "KeepAlive":
            return
        if kind == "Finalize":
            await self._flush_audio()
            self._finalizing = True
            self.session.commit()
            return
        if kind == "CloseStream":
            await self._flush_audio()
            self.session.stop()
            await self.session.drain()
            await self.send_json({
                "type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id,
                "sha256": self._sha.hexdigest(), "created": self._created,
                "duration": round(self._received_s, 3), "channels": 1, "models": [self._model_uuid],
                "model_info": {self._model_uuid: self._metadata()["model_info"]},
            })
            await self.close(CLOSE_NORMAL, "stream closed")
            return
        await self.error(f"Unknown control message {echo(kind)}: send KeepAlive, Finalize or CloseStream "
                         "(audio goes in binary frames).", "UNKNOWN_MESSAGE")

    async def _flush_audio(self) -> None:
        if self.pcm is not None:
            tail = self.pcm.flush()
            self._received_s += len(tail) / SAMPLE_RATE
            await self.session.feed_samples(tail)
            self.pcm.reset()

    async def _maybe_utterance_end(self) -> None:
        gap = self.options.utterance_end_s
        if gap and self._last_word_end is not None and self._received_s >= self._last_word_end + gap:
            last, self._last_word_end = self._last_word_end, None
            await self.send_json({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": round(last, 3)})

    # --- core events ----------------------------------------------------------------------------------
    def _results(self, *, start: float, end: float, transcript: str, words: list, is_final: bool,
                 speech_final: bool, confidence: float, from_finalize: bool = False) -> dict:
        result = {
            "type": "Results", "channel_index": [0, 1], "duration": round(max(end - start, 0.0), 3),
            "start": round(start, 3), "is_final": is_final, "speech_final": speech_final,
            "channel": {"alternatives": [{"transcript": transcript, "confidence": round(confidence, 4),
                                          "words": words}]},
            "metadata": self._metadata(),
        }
        if from_finalize:
            result["from_finalize"] = True
        return result

    async def on_event(self, event) -> None:
        if isinstance(event, ev.SpeechStarted):
            self._last_word_end = None  # speech goes on: no UtteranceEnd for what came before
            if self.options.vad_events:
                await self.send_json({"type": "SpeechStarted", "channel": [0, 1], "timestamp": event.start})
        elif isinstance(event, ev.PartialText):
            if self.options.interim_results:
                tokens = event.text.split()
                step = (event.end - event.start) / max(len(tokens), 1)
                words = [_word(t, event.start + i * step, event.start + (i + 1) * step, 0.5)
                         for i, t in enumerate(tokens)]  # interim timings are spread evenly (no alignment)
                await self.send_json(self._results(start=event.start, end=event.end, transcript=event.text,
                                                   words=words, is_final=False, speech_final=False,
                                                   confidence=0.5))
        elif isinstance(event, ev.FinalText):
            words = [_word(w.word, w.start, w.end, w.probability) for w in (event.words or [])]
            confidence = float(np.mean([w["confidence"] for w in words])) if words else 0.0
            from_finalize = self._finalizing and event.reason == "commit"
            if event.reason == "commit":
                self._finalizing = False
            await self.send_json(self._results(
                start=event.start, end=event.end, transcript=event.text, words=words, is_final=True,
                speech_final=event.reason == "silence", confidence=confidence, from_finalize=from_finalize))
            if words:
                self._last_word_end = words[-1]["end"]
                await self._maybe_utterance_end()
        elif isinstance(event, ev.Failed):
            await self.error(event.message, "TRANSCRIPTION_FAILED")
        elif isinstance(event, ev.Problem):
            if event.code == "COMMIT_EMPTY":
                self._finalizing = False
                return  # Finalize with nothing open: nothing to say
            await self.error(event.message, event.code)


def _word(token: str, start: float, end: float, probability: float) -> dict:
    bare = "".join(c for c in token.lower() if c.isalnum() or c in "'-") or token.lower()
    return {"word": bare, "start": round(start, 3), "end": round(end, 3), "confidence": round(probability, 4),
            "punctuated_word": token}


def _key_from(websocket: WebSocket) -> tuple[Optional[str], Optional[str]]:
    authorization = websocket.headers.get("authorization") or ""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip(), None
    offered = list(websocket.scope.get("subprotocols") or [])
    if len(offered) == 2 and offered[0].lower() in ("token", "bearer"):  # browsers: ["token", KEY]
        return offered[1], offered[0]
    return websocket.query_params.get("token") or websocket.query_params.get("access_token"), None


@router.websocket("/v1/listen")
async def listen(websocket: WebSocket) -> None:
    try:
        options = ListenOptions(websocket.query_params, websocket.app.state.ctx.engine)
    except BadParams as exc:
        await websocket.send_denial_response(JSONResponse(
            {"err_code": "Bad Request", "err_msg": str(exc), "request_id": str(uuid.uuid4())}, status_code=400))
        return
    key, subprotocol = _key_from(websocket)
    await run_socket(websocket, lambda ws, ctx, info: ListenSocket(ws, ctx, info, options), key,
                     subprotocol=subprotocol, deny_with_http=True)
