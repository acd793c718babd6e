"""OpenAI Realtime API, transcription sessions: ``GET /v1/realtime?intent=transcription`` (WebSocket).

A thin adapter over the streaming core: client events are parsed here and become core calls
(append -> audio, commit, clear); core events become OpenAI's server events. Both session shapes work:
the beta ``transcription_session.update`` (answered with ``transcription_session.*`` events) and the GA
``session.update`` with ``session.type: "transcription"`` (answered with ``session.*``). The shape of the
greeting follows the client: ``OpenAI-Beta: realtime=v1`` (header or subprotocol) gets the beta one.

Deltas are sent while the person speaks: the words of the open utterance that have become stable (two
previews in a row agree on them) are appended as they settle; the ``completed`` transcript is those
deltas plus the rest of the final decoding, so an item's deltas always add up to its transcript.
"""

from __future__ import annotations

import base64
import binascii
import copy
import secrets
from typing import Any, Callable, Optional

from fastapi import APIRouter, WebSocket

from ..engine import UnsupportedLanguageError
from ..streaming import events as ev
from ..streaming.codecs import MAX_RATE, MIN_RATE, PCMStream
from ..streaming.protocol import SILENCE_MAX_S, SILENCE_MIN_S
from ..streaming.recogniser import EngineRecogniser
from ..streaming.session import SessionConfig, StreamingPolicy, StreamingSession
from ..untrusted import InvalidJSON, echo, parse_json, plain_prompt
from .stream_socket import CLOSE_POLICY, StreamSocket, run_socket

router = APIRouter()

SUBPROTOCOL_KEY = "openai-insecure-api-key."
MAX_APPEND_B64 = 15 * 1024 * 1024  # OpenAI's limit for one append event
FORMATS = {"pcm16": ("pcm16", 24000), "g711_ulaw": ("mulaw", 8000), "g711_alaw": ("alaw", 8000)}
GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "mulaw", "audio/pcma": "alaw"}
DEFAULT_VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}
_VAD_KEYS = {"type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
             "interrupt_response", "idle_timeout_ms"}
_TRANSCRIPTION_KEYS = {"model", "language", "prompt"}
_PROBLEM_CODES = {"COMMIT_EMPTY": "input_audio_buffer_commit_empty", "BUFFER_FULL": "input_audio_buffer_full"}


class ConfigError(ValueError):
    def __init__(self, message: str, param: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class TranscriptionConfig:
    """The session as OpenAI describes it, kept in our terms."""

    def __init__(self) -> None:
        self.encoding, self.rate = "pcm16", 24000
        self.model = "whisper-1"
        self.language: Optional[str] = None
        self.prompt = ""
        self.turn_detection: Optional[dict] = dict(DEFAULT_VAD)
        self.noise_reduction: Optional[dict] = None
        self.include: list = []

    # --- answers in the two shapes ------------------------------------------------------------------
    def format_beta(self) -> str:
        return {"pcm16": "pcm16", "mulaw": "g711_ulaw", "alaw": "g711_alaw"}[self.encoding]

    def format_ga(self) -> dict:
        name = {"pcm16": "audio/pcm", "mulaw": "audio/pcmu", "alaw": "audio/pcma"}[self.encoding]
        return {"type": name, "rate": self.rate} if self.encoding == "pcm16" else {"type": name}

    def transcription(self) -> dict:
        return {"model": self.model, "language": self.language or "", "prompt": self.prompt}

    def beta(self, session_id: str) -> dict:
        return {
            "id": session_id, "object": "realtime.transcription_session", "expires_at": 0,
            "input_audio_format": self.format_beta(), "input_audio_transcription": self.transcription(),
            "turn_detection": self.turn_detection, "input_audio_noise_reduction": self.noise_reduction,
            "include": self.include, "modalities": ["text"], "client_secret": None,
        }

    def ga(self, session_id: str) -> dict:
        return {
            "type": "transcription", "id": session_id, "object": "realtime.transcription_session",
            "expires_at": 0, "include": self.include,
            "audio": {"input": {"format": self.format_ga(), "transcription": self.transcription(),
                                "turn_detection": self.turn_detection, "noise_reduction": self.noise_reduction}},
        }

    # --- updates ------------------------------------------------------------------------------------
    def apply_beta(self, session: dict, engine, unknown: Callable[[str], None]) -> None:
        for key in session:
            if key not in {"input_audio_format", "input_audio_transcription", "turn_detection",
                           "input_audio_noise_reduction", "include", "modalities", "client_secret", "type"}:
                unknown(f"session.{key}")
        if "input_audio_format" in session:
            name = session["input_audio_format"]
            if not isinstance(name, str) or name not in FORMATS:  # a list or object: not a key to look up
                raise ConfigError(f"Unsupported input_audio_format {echo(name)}: use pcm16, g711_ulaw or "
                                  "g711_alaw.", "session.input_audio_format")
            self.encoding, self.rate = FORMATS[name]
        self._transcription(session, "input_audio_transcription", "session.input_audio_transcription", engine,
                            unknown)
        self._turn_detection(session, "turn_detection", "session.turn_detection", unknown)
        self._noise(session, "input_audio_noise_reduction", "session.input_audio_noise_reduction")
        self._include(session)

    def apply_ga(self, session: dict, engine, unknown: Callable[[str], None]) -> None:
        kind = session.get("type", "transcription")
        if kind != "transcription":
            raise ConfigError(f"Only transcription sessions are served here (session.type "
                              f"{echo(kind)}); use session.type \"transcription\".", "session.type")
        for key in session:
            if key not in {"type", "audio", "include", "client_secret", "id", "object", "expires_at"}:
                unknown(f"session.{key}")
        audio = session.get("audio") or {}
        if not isinstance(audio, dict):
            raise ConfigError("session.audio must be an object.", "session.audio")
        for key in audio:
            if key != "input":
                unknown(f"session.audio.{key}")
        inp = audio.get("input") or {}
        if not isinstance(inp, dict):
            raise ConfigError("session.audio.input must be an object.", "session.audio.input")
        for key in inp:
            if key not in {"format", "transcription", "turn_detection", "noise_reduction"}:
                unknown(f"session.audio.input.{key}")
        if "format" in inp:
            fmt = inp["format"]
            fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
            if not isinstance(fmt_type, str) or fmt_type not in GA_FORMATS:
                raise ConfigError("Unsupported session.audio.input.format: use {\"type\": \"audio/pcm\", "
                                  "\"rate\": 24000}, audio/pcmu or audio/pcma.", "session.audio.input.format.type")
            encoding = GA_FORMATS[fmt_type]
            rate = 24000 if encoding == "pcm16" else 8000
            if encoding == "pcm16" and "rate" in fmt:
                rate = fmt["rate"]
                if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_RATE <= rate <= MAX_RATE:
                    raise ConfigError(f"Unsupported rate {echo(str(rate))}: {MIN_RATE}-{MAX_RATE} (OpenAI: 24000).",
                                      "session.audio.input.format.rate")
            self.encoding, self.rate = encoding, rate
        self._transcription(inp, "transcription", "session.audio.input.transcription", engine, unknown)
        self._turn_detection(inp, "turn_detection", "session.audio.input.turn_detection", unknown)
        self._noise(inp, "noise_reduction", "session.audio.input.noise_reduction")
        self._include(session)

    def _transcription(self, parent: dict, key: str, param: str, engine, unknown) -> None:
        if key not in parent:
            return
        value = parent[key]
        if value is None:
            return
        if not isinstance(value, dict):
            raise ConfigError(f"{param} must be an object.", param)
        for k in value:
            if k not in _TRANSCRIPTION_KEYS:
                unknown(f"{param}.{k}")
        if "language" in value:
            try:
                language = engine.normalize_language(value["language"] if isinstance(value["language"], str)
                                                     else None if value["language"] is None else "?")
            except UnsupportedLanguageError as exc:
                raise ConfigError(str(exc), f"{param}.language") from None
            self.language = language
        if "prompt" in value:
            prompt = value["prompt"]
            if prompt is not None and not isinstance(prompt, str):
                raise ConfigError("prompt must be a string.", f"{param}.prompt")
            self.prompt = plain_prompt((prompt or "")[:2000])
        if "model" in value:
            if not isinstance(value["model"], str):
                raise ConfigError("model must be a string.", f"{param}.model")
            self.model = value["model"][:100]  # any name: the loaded model transcribes

    def _turn_detection(self, parent: dict, key: str, param: str, unknown) -> None:
        if key not in parent:
            return
        value = parent[key]
        if value is None:
            self.turn_detection = None
            return
        if not isinstance(value, dict):
            raise ConfigError(f"{param} must be an object or null.", param)
        kind = value.get("type", "server_vad")
        if kind != "server_vad":
            raise ConfigError(f"Unsupported turn detection {echo(kind)}: use server_vad or null.",
                              f"{param}.type")
        for k in value:
            if k not in _VAD_KEYS:
                unknown(f"{param}.{k}")
        merged = dict(DEFAULT_VAD)
        for name, low, high in (("threshold", 0.0, 1.0), ("prefix_padding_ms", 0, 2000),
                                ("silence_duration_ms", 0, 60000)):
            if value.get(name) is not None:
                number = value[name]
                if not isinstance(number, (int, float)) or isinstance(number, bool) or not low <= number <= high:
                    raise ConfigError(f"{name} must be a number in {low}-{high}.", f"{param}.{name}")
                merged[name] = number
        self.turn_detection = merged

    def _noise(self, parent: dict, key: str, param: str) -> None:
        if key not in parent:
            return
        value = parent[key]
        if value is not None and (not isinstance(value, dict) or value.get("type") not in ("near_field", "far_field")):
            raise ConfigError("noise_reduction must be null or {\"type\": \"near_field\" | \"far_field\"}.", param)
        self.noise_reduction = value  # accepted; Whisper needs no separate noise reduction

    def _include(self, session: dict) -> None:
        include = session.get("include")
        if isinstance(include, list):
            self.include = [x for x in include if isinstance(x, str)][:8]

    def session_config(self, settings, debug_name: str) -> tuple[SessionConfig, StreamingPolicy]:
        policy = StreamingPolicy()
        vad = self.turn_detection
        silence = 2.0
        if vad is not None:
            silence = min(max(vad["silence_duration_ms"] / 1000, SILENCE_MIN_S), SILENCE_MAX_S)
            policy.speech_threshold = float(vad["threshold"])
            policy.neg_threshold = max(0.0, policy.speech_threshold - 0.15)
            policy.pre_roll_s = min(vad["prefix_padding_ms"], 1000) / 1000
        return SessionConfig(
            language=self.language, audio_format="float32", silence_threshold=silence,
            max_buffer_s=settings.max_audio_buffer_s, debug_dir=settings.debug_dir if settings.debug else None,
            debug_name=debug_name, endpointing=vad is not None, partials=vad is not None,
        ), policy


class RealtimeSocket(StreamSocket):
    name = "realtime"

    def __init__(self, ws: WebSocket, ctx: Any, info, *, beta: bool) -> None:
        super().__init__(ws, ctx, info)
        self.beta = beta
        self.session_id = "sess_" + secrets.token_hex(12)
        self._item_prefix = "item_" + secrets.token_hex(6)
        self.config = TranscriptionConfig()
        self.configured = False
        self.pcm: Optional[PCMStream] = None
        self.previous_item: Optional[str] = None
        self._client_event_id: Optional[str] = None
        self._handlers = {
            "transcription_session.update": self.on_beta_update,
            "session.update": self.on_ga_update,
            "input_audio_buffer.append": self.on_append,
            "input_audio_buffer.commit": self.on_commit,
            "input_audio_buffer.clear": self.on_clear,
        }

    # --- sending ----------------------------------------------------------------------------------
    async def emit(self, kind: str, **fields) -> None:
        await self.send_json({"type": kind, "event_id": "event_" + secrets.token_hex(10), **fields})

    async def error(self, message: str, code: str, *, param: Optional[str] = None,
                    kind: str = "invalid_request_error") -> None:
        await self.emit("error", error={"type": kind, "code": code, "message": message, "param": param,
                                        "event_id": self._client_event_id})

    def item_id(self, utterance_id: int) -> str:
        return f"{self._item_prefix}_{utterance_id:04d}"

    async def announce(self, created: bool, beta: Optional[bool] = None) -> None:
        beta = self.beta if beta is None else beta
        if beta:
            await self.emit("transcription_session.created" if created else "transcription_session.updated",
                            session=self.config.beta(self.session_id))
        else:
            await self.emit("session.created" if created else "session.updated",
                            session=self.config.ga(self.session_id))

    async def on_open(self) -> None:
        intent = self.ws.query_params.get("intent")
        if intent not in (None, "transcription"):
            await self.error(f"Only transcription sessions are served here (intent {echo(intent)}); connect "
                             "with ?intent=transcription.", "invalid_value", param="intent")
            await self.close(CLOSE_POLICY, "unsupported intent")
            return
        await self.announce(created=True)

    # --- client events ------------------------------------------------------------------------------
    async def on_binary(self, data: bytes) -> None:
        await self.error("Binary frames are not part of this protocol: send audio as base64 in "
                         "input_audio_buffer.append events.", "invalid_event")

    async def on_text(self, text: str) -> None:
        self._client_event_id = None
        try:
            event = parse_json(text)
        except InvalidJSON as exc:
            await self.error(f"Events must be JSON objects; this is {exc}.", "invalid_json")
            return
        if not isinstance(event, dict):
            await self.error("Events must be JSON objects with a \"type\".", "invalid_event")
            return
        event_id = event.get("event_id")
        self._client_event_id = event_id[:64] if isinstance(event_id, str) else None
        kind = event.get("type")
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            known = ", ".join(self._handlers)
            await self.error(f"Unknown or unsupported event type {echo(kind)}; a transcription session takes "
                             f"{known}.", "invalid_event_type", param="type")
            return
        await handler(event)

    async def _update(self, event: dict, beta: bool) -> None:
        session = event.get("session")
        if not isinstance(session, dict):
            await self.error("The event needs a \"session\" object.", "invalid_value", param="session")
            return
        unknown: list[str] = []
        config = copy.deepcopy(self.config)  # an update that fails changes nothing
        try:
            (config.apply_beta if beta else config.apply_ga)(session, self.ctx.engine, unknown.append)
        except ConfigError as exc:
            await self.error(str(exc), exc.code, param=exc.param)
            return
        for param in unknown:
            await self.error(f"Unknown or unsupported field {param}; it is ignored.", "unknown_parameter",
                             param=param)
        self.config, self.configured = config, True
        await self._restart()
        await self.announce(created=False, beta=beta)

    async def on_beta_update(self, event: dict) -> None:
        await self._update(event, beta=True)

    async def on_ga_update(self, event: dict) -> None:
        await self._update(event, beta=False)

    async def _restart(self) -> None:
        """A (re)configured session: a fresh core with the new settings (buffered audio is dropped)."""
        await self.end_session()
        settings = self.ctx.settings
        config, policy = self.config.session_config(settings, f"realtime_{self.info.id}")
        self.pcm = PCMStream(self.config.encoding, self.config.rate)  # type: ignore[arg-type]
        self.session = StreamingSession(
            EngineRecogniser(self.ctx.engine, prompt=self.config.prompt), config, self.on_event,
            self.ctx.engine.run_vad, stats=self.info, policy=policy, first_utterance_id=self.next_utterance_id,
        )
        self.session.start()

    async def on_append(self, event: dict) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            await self.error("input_audio_buffer.append needs \"audio\": base64 audio bytes.", "invalid_value",
                             param="audio")
            return
        if len(audio) > MAX_APPEND_B64:
            await self.error(f"Audio too large for one event: at most {MAX_APPEND_B64 // (1024 * 1024)} MiB of "
                             "base64; send smaller chunks.", "invalid_value", param="audio")
            return
        if self.session is None or not self.configured:
            await self.error("Configure the session first (transcription_session.update or session.update); "
                             "this audio was dropped.", "session_not_configured")
            return
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            await self.error("\"audio\" is not valid base64.", "invalid_value", param="audio")
            return
        await self.session.feed_samples(self.pcm.feed(data))

    async def on_commit(self, event: dict) -> None:
        if self.session is None:
            await self.error("Nothing to commit: the audio buffer is empty.", "input_audio_buffer_commit_empty")
            return
        await self.session.feed_samples(self.pcm.flush())
        self.pcm.reset()
        self.session.commit()

    async def on_clear(self, event: dict) -> None:
        if self.session is None:
            await self.emit("input_audio_buffer.cleared")
            return
        self.pcm.reset()
        self.session.clear()

    # --- core events ----------------------------------------------------------------------------------
    async def on_event(self, event) -> None:
        vad = self.config.turn_detection is not None
        if isinstance(event, ev.SpeechStarted):
            if vad:
                await self.emit("input_audio_buffer.speech_started", audio_start_ms=int(event.start * 1000),
                                item_id=self.item_id(event.utterance_id))
        elif isinstance(event, ev.SpeechStopped):
            if vad:
                await self.emit("input_audio_buffer.speech_stopped", audio_end_ms=int(event.end * 1000),
                                item_id=self.item_id(event.utterance_id))
        elif isinstance(event, ev.Committed):
            item = self.item_id(event.utterance_id)
            await self.emit("input_audio_buffer.committed", previous_item_id=self.previous_item, item_id=item)
            await self.emit("conversation.item.created" if self.beta else "conversation.item.added",
                            previous_item_id=self.previous_item, item={
                                "id": item, "object": "realtime.item", "type": "message", "status": "completed",
                                "role": "user", "content": [{"type": "input_audio", "transcript": None}]})
            self.previous_item = item
        elif isinstance(event, ev.PartialText):
            if event.delta:
                await self.emit("conversation.item.input_audio_transcription.delta",
                                item_id=self.item_id(event.utterance_id), content_index=0, delta=event.delta)
        elif isinstance(event, ev.FinalText):
            item = self.item_id(event.utterance_id)
            if event.delta:
                await self.emit("conversation.item.input_audio_transcription.delta", item_id=item,
                                content_index=0, delta=event.delta)
            await self.emit("conversation.item.input_audio_transcription.completed", item_id=item,
                            content_index=0, transcript=event.item_text,
                            usage={"type": "duration", "seconds": round(event.duration, 3)})
        elif isinstance(event, ev.Failed):
            if event.utterance_id is None:
                await self.error(event.message, "server_error", kind="server_error")
            else:
                await self.emit("conversation.item.input_audio_transcription.failed",
                                item_id=self.item_id(event.utterance_id), content_index=0,
                                error={"type": "server_error", "code": "transcription_failed",
                                       "message": event.message, "param": None})
        elif isinstance(event, ev.Notice):
            if event.state == "cleared":
                await self.emit("input_audio_buffer.cleared")
        elif isinstance(event, ev.Problem):
            await self.error(event.message, _PROBLEM_CODES.get(event.code, event.code.lower()))

    async def flush(self, grace: float) -> None:
        """Revocation / shutdown: the open utterance is committed and transcribed first."""
        if self.session is not None and self.config.turn_detection is not None:
            await super().flush(grace)


def _key_from(websocket: WebSocket) -> tuple[Optional[str], Optional[str], bool]:
    """(API key, subprotocol to accept, beta shape) from the handshake."""
    offered = list(websocket.scope.get("subprotocols") or [])
    key = None
    authorization = websocket.headers.get("authorization")
    if authorization and authorization[:7].lower() == "bearer ":
        key = authorization[7:].strip()
    for proto in offered:
        if proto.startswith(SUBPROTOCOL_KEY) and key is None:
            key = proto[len(SUBPROTOCOL_KEY):]
    if key is None:
        key = websocket.headers.get("x-api-key")
    # Browsers fail a connection whose accepted subprotocol they did not offer, and one offered must be
    # chosen: "realtime" as OpenAI does, never the one carrying the key.
    chosen = "realtime" if "realtime" in offered else next(
        (p for p in offered if not p.startswith(SUBPROTOCOL_KEY)), None)
    beta = "realtime=v1" in (websocket.headers.get("openai-beta") or "") or "openai-beta.realtime-v1" in offered
    return key, chosen, beta


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    key, subprotocol, beta = _key_from(websocket)
    await run_socket(websocket, lambda ws, ctx, info: RealtimeSocket(ws, ctx, info, beta=beta), key,
                     subprotocol=subprotocol)
