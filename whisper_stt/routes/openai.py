"""OpenAI-compatible REST: /v1/audio/transcriptions, /v1/audio/translations, /v1/models.

Enough of OpenAI's audio API that the official ``openai`` package (and tools built on it) work unchanged
when pointed at this server: the same form fields, the five response formats, word timestamps,
server-sent events for ``stream=true``, Bearer keys and ``{"error": {...}}`` bodies.

Errors: routes raise ``HTTPException`` as everywhere else (the detail may be a dict with ``message``,
``param`` and ``code``); :class:`OpenAIErrorMiddleware` turns every ``{"detail": ...}`` error on /v1/
(auth, validation, the body-size 413, 404/405, a 500) into OpenAI's shape, so the original routes keep
their ``{"detail": ...}`` bodies.
"""

from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator, Optional

from fastapi import APIRouter, Depends, File, Form, Header, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..context import AppState
from ..engine import Segment, TranscriptionResult, UnsupportedLanguageError
from ..untrusted import echo, plain_prompt
from ..state import QuotaExceeded, StateUnavailable
from .deps import _bearer, authorize, get_ctx, quota_headers
from .responses import (OPENAI_AUDIO_ERRORS, OPENAI_AUDIO_OK, OPENAI_AUTH_ERRORS, OPENAI_NOT_FOUND, ModelList,
                        ModelObject)
from .rest import accept_upload, note_result, prepare_audio

log = logging.getLogger(__name__)

PREFIX = "/v1"
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")

# Whisper's language names (OpenAI's verbose_json reports "english", not "en").
LANGUAGE_NAMES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian", "ko": "korean",
    "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish", "pl": "polish",
    "ca": "catalan", "nl": "dutch", "ar": "arabic", "sv": "swedish", "it": "italian",
    "id": "indonesian", "hi": "hindi", "fi": "finnish", "vi": "vietnamese", "he": "hebrew",
    "uk": "ukrainian", "el": "greek", "ms": "malay", "cs": "czech", "ro": "romanian", "da": "danish",
    "hu": "hungarian", "ta": "tamil", "no": "norwegian", "th": "thai", "ur": "urdu", "hr": "croatian",
    "bg": "bulgarian", "lt": "lithuanian", "la": "latin", "mi": "maori", "ml": "malayalam",
    "cy": "welsh", "sk": "slovak", "te": "telugu", "fa": "persian", "lv": "latvian", "bn": "bengali",
    "sr": "serbian", "az": "azerbaijani", "sl": "slovenian", "kn": "kannada", "et": "estonian",
    "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian",
    "ne": "nepali", "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian",
    "sw": "swahili", "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala",
    "km": "khmer", "sn": "shona", "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan",
    "ka": "georgian", "be": "belarusian", "tg": "tajik", "sd": "sindhi", "gu": "gujarati",
    "am": "amharic", "yi": "yiddish", "lo": "lao", "uz": "uzbek", "fo": "faroese",
    "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk", "mt": "maltese",
    "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog",
    "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala",
    "ha": "hausa", "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, code)


# --- errors ----------------------------------------------------------------------------------------
def api_error(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
              headers: Optional[dict] = None) -> HTTPException:
    """An HTTPException that the /v1 error middleware renders with ``param`` and ``code``."""
    return HTTPException(status, {"message": message, "param": param, "code": code}, headers=headers)


def _error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


_DEFAULT_CODES = {404: "not_found", 405: "method_not_allowed", 413: "file_too_large"}


def openai_error_body(status: int, detail: Any) -> dict:
    param = code = None
    if isinstance(detail, dict):
        message = detail.get("message") or detail.get("detail") or json.dumps(detail)
        param, code = detail.get("param"), detail.get("code")
    elif isinstance(detail, list):  # FastAPI's default validation error list
        message = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    else:
        message = str(detail)
    return {
        "error": {
            "message": message,
            "type": _error_type(status),
            "param": param,
            "code": code if code is not None else _DEFAULT_CODES.get(status),
        }
    }


def is_openai_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class OpenAIErrorMiddleware:
    """On /v1/ paths, rewrite JSON error bodies ``{"detail": ...}`` into ``{"error": {...}}``.

    Sits outside the body-size limit so its 413 is rewritten too; an unhandled exception gets an
    OpenAI-shaped 500 here and is re-raised for the server's error handler to log.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_openai_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        held: Optional[Message] = None  # the start of an error response, until its body is complete
        chunks: list[bytes] = []
        started = False

        async def rewrite(message: Message) -> None:
            nonlocal held, started
            if message["type"] == "http.response.start":
                started = True
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if message["status"] >= 400 and content_type.startswith(b"application/json"):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = _rewrite_body(held["status"], b"".join(chunks))
                headers = [(k, v) for k, v in held.get("headers", []) if k != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**held, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        try:
            await self.app(scope, receive, rewrite)
        except Exception:
            if not started:
                body = json.dumps(openai_error_body(500, "Internal server error.")).encode()
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
            raise


def _rewrite_body(status: int, raw: bytes) -> bytes:
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = {"detail": raw.decode("utf-8", "replace")}
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return raw  # already OpenAI-shaped
    detail = payload.get("detail", payload) if isinstance(payload, dict) else payload
    return json.dumps(openai_error_body(status, detail)).encode()


# --- auth --------------------------------------------------------------------------------------------
async def require_openai_key(
    request: Request,
    ctx: AppState = Depends(get_ctx),
    authorization: Optional[str] = Header(None),
    x_api_key: Optional[str] = Header(None),
) -> None:
    """Authorization: Bearer (what OpenAI clients send) or X-API-Key; 401 for missing and unknown keys,
    as OpenAI answers."""
    if not ctx.settings.auth_enabled:
        return
    key = _bearer(authorization) or x_api_key
    challenge = {"WWW-Authenticate": "Bearer"}
    if not key:
        raise api_error(401, "Missing API key: send it as 'Authorization: Bearer sk-...'.",
                        code="missing_api_key", headers=challenge)
    try:
        info = await authorize(ctx, request, key)
    except StateUnavailable as exc:
        raise api_error(503, str(exc), code="service_unavailable", headers={"Retry-After": "5"}) from None
    except QuotaExceeded as exc:
        raise api_error(429, str(exc), code="rate_limit_exceeded" if exc.limit == "requests_per_minute"
                        else "insufficient_quota", headers=quota_headers(exc)) from None
    if info is None:
        raise api_error(401, "Incorrect API key provided.", code="invalid_api_key", headers=challenge)


router = APIRouter(prefix=PREFIX, tags=["openai-compatible"], dependencies=[Depends(require_openai_key)],
                   responses=OPENAI_AUTH_ERRORS)


# --- models ------------------------------------------------------------------------------------------
def _model_object(ctx: AppState) -> dict:
    return {
        "id": ctx.engine.model_name,
        "object": "model",
        "created": int(ctx.stats.started_at),
        "owned_by": "whisper-stt",
    }


@router.get("/models", responses={200: {"model": ModelList}})
async def list_models(ctx: AppState = Depends(get_ctx)):
    """The loaded model, in OpenAI's list shape. Transcription requests accept any ``model`` value
    (``whisper-1`` ...) and use this one."""
    return {"object": "list", "data": [_model_object(ctx)]}


@router.get("/models/{model_id:path}", responses={200: {"model": ModelObject}, **OPENAI_NOT_FOUND})
async def retrieve_model(model_id: str, ctx: AppState = Depends(get_ctx)):
    if model_id != ctx.engine.model_name:
        raise api_error(404, f"The model {echo(model_id)} does not exist; this server has "
                        f"'{ctx.engine.model_name}'.", param="model", code="model_not_found")
    return _model_object(ctx)


# --- response formats --------------------------------------------------------------------------------
def _timestamp(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def to_srt(segments: list[Segment]) -> str:
    return "\n".join(
        f"{i}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text}\n"
        for i, s in enumerate(segments, 1)
    )


def to_vtt(segments: list[Segment]) -> str:
    cues = "\n".join(f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text}\n" for s in segments)
    return "WEBVTT\n\n" + cues


def to_verbose(result: TranscriptionResult, task: str, segments: bool, words: bool) -> dict:
    body: dict = {
        "task": task,
        # A translation's text is English whatever was spoken (OpenAI reports "english" too).
        "language": "english" if task == "translate" else language_name(result.language),
        "duration": result.duration,
        "text": result.text,
    }
    if segments:
        body["segments"] = [
            {
                "id": i,
                # Our segments do not carry Whisper's window offset or token ids: seek is the segment's
                # start in 10 ms mel frames and tokens is left empty.
                "seek": int(round(s.start * 100)),
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": [],
                "temperature": s.temperature,
                "avg_logprob": s.confidence,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            }
            for i, s in enumerate(result.segments)
        ]
    if words:
        body["words"] = [
            {"word": w.word.strip(), "start": w.start, "end": w.end}
            for s in result.segments
            for w in (s.words or [])
        ]
    body["usage"] = {"type": "duration", "seconds": result.duration}
    return body


def format_response(result: TranscriptionResult, fmt: str, task: str, granularities: set[str],
                    headers: dict):
    if fmt == "text":
        return PlainTextResponse(result.text + "\n", headers=headers)
    if fmt == "srt":
        return PlainTextResponse(to_srt(result.segments), headers=headers)
    if fmt == "vtt":
        return PlainTextResponse(to_vtt(result.segments), media_type="text/vtt", headers=headers)
    if fmt == "verbose_json":
        body = to_verbose(result, task, segments="segment" in granularities or not granularities,
                          words="word" in granularities)
        return JSONResponse(body, headers=headers)
    body = {"text": result.text}
    if task == "transcribe":
        body["usage"] = {"type": "duration", "seconds": result.duration}
    return JSONResponse(body, headers=headers)


# --- transcriptions / translations -------------------------------------------------------------------
def _sse(event: dict) -> bytes:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


def _parse_bool(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes", "on")


async def _handle(
    request: Request,
    ctx: AppState,
    task: str,
    file: Optional[UploadFile],
    language: Optional[str],
    prompt: Optional[str],
    response_format: Optional[str],
    temperature: Optional[str],
    stream: Optional[str],
):
    if file is None or not hasattr(file, "file"):
        raise api_error(422, "Missing 'file': the audio file to transcribe (multipart form field).",
                        param="file")
    fmt = (response_format or "json").strip().lower()
    if fmt not in RESPONSE_FORMATS:
        raise api_error(400, f"Unsupported response_format {echo(response_format)}; use one of "
                        f"{', '.join(RESPONSE_FORMATS)}.", param="response_format")
    try:
        temp = float(temperature) if temperature not in (None, "") else 0.0
    except ValueError:
        raise api_error(400, f"'temperature' must be a number between 0 and 1, not {echo(temperature)}.",
                        param="temperature") from None
    if not 0.0 <= temp <= 1.0:
        raise api_error(400, "'temperature' must be between 0 and 1.", param="temperature")
    form = await request.form()
    granularities = {g.strip().lower() for key in ("timestamp_granularities[]", "timestamp_granularities")
                     for g in form.getlist(key) if isinstance(g, str) and g.strip()}
    unknown = granularities - set(GRANULARITIES)
    if unknown:
        raise api_error(400, f"Unsupported timestamp granularity {', '.join(sorted(unknown))}; use "
                        "segment and/or word.", param="timestamp_granularities[]")
    try:
        ctx.engine.normalize_language(language)
    except UnsupportedLanguageError as exc:
        raise api_error(400, str(exc), param="language") from exc

    source = await accept_upload(ctx, file)
    audio, language = await prepare_audio(ctx, source, language)

    options: dict = {"task": task}
    prompt = plain_prompt(prompt or "")
    if prompt:
        options["initial_prompt"] = prompt
    # OpenAI: temperature 0 lets the model raise it as needed, which is faster-whisper's default
    # fallback schedule; a positive value is used as given (sampling).
    if temp > 0:
        options["temperature"] = temp
    if fmt == "verbose_json" and "word" in granularities:
        options["word_timestamps"] = True
    headers = {"openai-model": ctx.engine.model_name}

    if _parse_bool(stream):
        return StreamingResponse(
            _stream_events(request, ctx, audio, language, options),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    result = await ctx.engine.transcribe(audio, language, **options)
    note_result(request, result)
    return format_response(result, fmt, task, granularities, headers)


async def _stream_events(request: Request, ctx: AppState, audio, language: Optional[str],
                         options: dict) -> AsyncIterator[bytes]:
    """``transcript.text.delta`` per decoded segment, then ``transcript.text.done`` with the whole text."""
    text = ""
    result: Optional[TranscriptionResult] = None
    try:
        async for result in ctx.engine.transcribe_stream(audio, language, **options):
            delta = result.text[len(text):]
            text = result.text
            if delta:
                yield _sse({"type": "transcript.text.delta", "delta": delta})
    except Exception:  # the 200 is already sent: report in the stream, as OpenAI's client expects
        log.exception("Streaming transcription failed")
        yield _sse(openai_error_body(500, "Transcription failed on the server."))
        return
    if result is not None:
        note_result(request, result)
    yield _sse({"type": "transcript.text.done", "text": text})


_FILE_DOC = "Audio or video file (wav, mp3, m4a, ogg, flac, webm ...)."
_MODEL_DOC = "Any value (e.g. whisper-1) is accepted; the loaded model is used (see GET /v1/models)."
_FORMAT_DOC = "json (default), text, srt, vtt or verbose_json."
_TEMP_DOC = "0 (default): automatic fallback; 0 < t <= 1: sample at t."
_GRAN_DOC = "segment and/or word (word timestamps in verbose_json)."
_STREAM_DOC = "true: server-sent events as segments are decoded."


@router.post("/audio/transcriptions", responses={**OPENAI_AUDIO_OK, **OPENAI_AUDIO_ERRORS})
async def create_transcription(
    request: Request,
    file: Optional[UploadFile] = File(None, description=_FILE_DOC),
    model: Optional[str] = Form(None, description=_MODEL_DOC),
    language: Optional[str] = Form(None, description="ISO 639-1 code; empty for auto-detection."),
    prompt: Optional[str] = Form(None, description="Text to guide style or vocabulary."),
    response_format: Optional[str] = Form(None, description=_FORMAT_DOC),
    temperature: Optional[str] = Form(None, description=_TEMP_DOC),
    timestamp_granularities: Optional[list[str]] = Form(
        None, alias="timestamp_granularities[]", description=_GRAN_DOC
    ),
    stream: Optional[str] = Form(None, description=_STREAM_DOC),
    ctx: AppState = Depends(get_ctx),
):
    """OpenAI-compatible transcription in the spoken language."""
    return await _handle(request, ctx, "transcribe", file, language, prompt, response_format,
                         temperature, stream)


@router.post("/audio/translations", responses={**OPENAI_AUDIO_OK, **OPENAI_AUDIO_ERRORS})
async def create_translation(
    request: Request,
    file: Optional[UploadFile] = File(None, description=_FILE_DOC),
    model: Optional[str] = Form(None, description=_MODEL_DOC),
    prompt: Optional[str] = Form(None, description="Text to guide style or vocabulary (in English)."),
    response_format: Optional[str] = Form(None, description=_FORMAT_DOC),
    temperature: Optional[str] = Form(None, description=_TEMP_DOC),
    language: Optional[str] = Form(None, description="Optional: the spoken language (not in OpenAI's "
                                   "API); empty for auto-detection."),
    stream: Optional[str] = Form(None, description=_STREAM_DOC),
    ctx: AppState = Depends(get_ctx),
):
    """OpenAI-compatible translation of the speech into English text."""
    return await _handle(request, ctx, "translate", file, language, prompt, response_format,
                         temperature, stream)
