"""File transcription over REST: multipart upload and base64 JSON."""

from __future__ import annotations

import base64
import binascii
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Optional, Union

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile

from ..context import AppState
from ..audio import AudioDecodeError, AudioTooLong, decode_file
from ..engine import TranscriptionResult, UnsupportedLanguageError
from ..untrusted import InvalidJSON, parse_json
from .deps import get_ctx, record_audio, require_api_key
from .responses import API_KEY_ERRORS, BASE64_ERRORS, UPLOAD_ERRORS, TranscriptionOut

router = APIRouter(tags=["transcription"], dependencies=[Depends(require_api_key)], responses=API_KEY_ERRORS)

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def transcription_response(result: TranscriptionResult) -> dict:
    return {
        "success": True,
        "text": result.text,
        "language": result.language,
        "language_probability": result.language_probability,
        "duration": result.duration,
        "segments": [s.to_public() for s in result.segments],
        "processing_time": result.processing_time,
    }


def save_debug_upload(ctx: AppState, data: Union[bytes, BinaryIO], filename: str) -> Optional[Path]:
    """--debug: keep the upload exactly as received, named by time and request."""
    if not ctx.settings.debug:
        return None
    ctx.settings.debug_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    name = _SAFE_NAME.sub("_", Path(filename or "upload").name)[-80:] or "upload"
    path = ctx.settings.debug_dir / f"{stamp}_rest_{uuid.uuid4().hex[:8]}_{name}"
    with path.open("wb") as out:
        if isinstance(data, bytes):
            out.write(data)
        else:
            data.seek(0)
            shutil.copyfileobj(data, out)
            data.seek(0)
    return path


async def prepare_audio(
    ctx: AppState, source: Union[bytes, BinaryIO], language: Optional[str]
) -> tuple[np.ndarray, Optional[str]]:
    """Check the language and decode the file; client-caused failures become 4xx with a message."""
    ctx.stats.total_requests += 1
    try:
        language = ctx.engine.normalize_language(language)
    except UnsupportedLanguageError as exc:
        raise HTTPException(400, str(exc)) from exc
    try:
        audio = await ctx.engine.run_decode(decode_file, source, ctx.max_audio_s)
    except AudioTooLong as exc:
        raise HTTPException(413, str(exc)) from None
    except AudioDecodeError as exc:
        raise HTTPException(400, str(exc)) from None
    if len(audio) == 0:
        raise HTTPException(400, "The file decoded to no audio samples.")
    return audio, language


async def transcribe_source(
    ctx: AppState, source: Union[bytes, BinaryIO], language: Optional[str], **options
) -> TranscriptionResult:
    """Decode and transcribe; ``options`` go to :meth:`Engine.transcribe`."""
    audio, language = await prepare_audio(ctx, source, language)
    return await ctx.engine.transcribe(audio, language, **options)


def note_result(request: Request, result: TranscriptionResult) -> None:
    """Leave the figures for the access log and the metrics middleware on the request, and count the audio
    against the key's usage."""
    request.state.audio_seconds = result.duration
    request.state.processing_time = result.processing_time
    record_audio(request, request.app.state.ctx, result.duration)


async def accept_upload(ctx: AppState, file: UploadFile) -> BinaryIO:
    """Size checks (empty: 400, too large: 413) and --debug copy of a multipart upload."""
    size = file.size if file.size is not None else _measure(file.file)
    if size == 0:
        raise HTTPException(400, "The uploaded file is empty.")
    if size > ctx.settings.max_upload_bytes:
        raise HTTPException(413, f"Upload too large: the limit is {ctx.settings.max_upload_mb:g} MB.")
    if ctx.settings.debug:
        await ctx.engine.run_decode(save_debug_upload, ctx, file.file, file.filename or "upload")
    file.file.seek(0)
    return file.file


@router.post("/transcribe", responses={200: {"model": TranscriptionOut}, **UPLOAD_ERRORS})
async def transcribe_upload(
    request: Request,
    file: UploadFile = File(..., description="Audio or video file (wav, mp3, m4a, ogg, flac, webm ...)"),
    language: Optional[str] = Form(None, description="Language code; empty for auto-detection."),
    ctx: AppState = Depends(get_ctx),
):
    source = await accept_upload(ctx, file)
    result = await transcribe_source(ctx, source, language)
    note_result(request, result)
    return transcription_response(result)


def _measure(fh: BinaryIO) -> int:
    fh.seek(0, 2)
    size = fh.tell()
    fh.seek(0)
    return size


_DATA_URL = re.compile(r"^data:[^,]*;base64,", re.IGNORECASE)


@router.post(
    "/transcribe/base64",
    responses={200: {"model": TranscriptionOut}, **BASE64_ERRORS},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["audio"],
                        "properties": {
                            "audio": {
                                "type": "string",
                                "minLength": 1,
                                "description": "base64 of the file's bytes (a data: URL prefix is accepted)",
                            },
                            "language": {"type": "string", "description": "empty = auto-detect"},
                        },
                    }
                }
            },
        }
    },
)
async def transcribe_base64(request: Request, ctx: AppState = Depends(get_ctx)):
    try:
        body = parse_json(await request.body())
    except InvalidJSON as exc:
        raise HTTPException(400, f"The request body is {exc}.") from None
    if not isinstance(body, dict):
        raise HTTPException(400, 'Expected a JSON object like {"audio": "<base64>", "language": "en"}.')
    encoded = body.get("audio")
    if not encoded or not isinstance(encoded, str):
        raise HTTPException(400, "Missing 'audio': the base64-encoded audio file.")
    language = body.get("language")
    if language is not None and not isinstance(language, str):
        raise HTTPException(400, "'language' must be a string.")
    encoded = _DATA_URL.sub("", encoded.strip())
    try:
        data = base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HTTPException(400, "'audio' is not valid base64.") from exc
    if not data:
        raise HTTPException(400, "The decoded audio is empty.")
    if len(data) > ctx.settings.max_upload_bytes:
        raise HTTPException(413, f"Upload too large: the limit is {ctx.settings.max_upload_mb:g} MB.")
    if ctx.settings.debug:
        await ctx.engine.run_decode(save_debug_upload, ctx, data, "base64_upload")
    result = await transcribe_source(ctx, data, language)
    note_result(request, result)
    return transcription_response(result)
