"""A job as clients see it (GET /v1/jobs/{id}, the list, the webhook's body) and its raw result.

The result is rendered with the same functions as ``/v1/audio/transcriptions`` (routes/openai.py), so a
job's SRT is byte for byte what a direct request would give for the same transcription.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from ..engine import Segment, TranscriptionResult, Word
from .base import Job, JobStatus


def result_from_dict(data: dict) -> TranscriptionResult:
    """``TranscriptionResult.to_dict()`` -> the result again (stores keep plain dicts)."""
    segments = []
    for s in data.get("segments") or []:
        s = dict(s)
        words = s.pop("words", None)
        segments.append(Segment(**s, words=[Word(**w) for w in words] if words is not None else None))
    fields = {k: v for k, v in data.items() if k != "segments"}
    return TranscriptionResult(**fields, segments=segments)


def render_result(job: Job) -> tuple[Any, str]:
    """The result in the job's response_format: (a dict for json / verbose_json or a str, media type)."""
    from ..routes.openai import to_srt, to_verbose, to_vtt  # the /v1 renderers, shared

    result = result_from_dict(job.result or {})
    fmt = job.response_format
    if fmt == "text":
        return result.text + "\n", "text/plain; charset=utf-8"
    if fmt == "srt":
        return to_srt(result.segments), "text/plain; charset=utf-8"
    if fmt == "vtt":
        return to_vtt(result.segments), "text/vtt; charset=utf-8"
    if fmt == "verbose_json":
        return to_verbose(result, "transcribe", segments=True, words=job.word_timestamps), "application/json"
    return {"text": result.text, "usage": {"type": "duration", "seconds": result.duration}}, "application/json"


def _unix(t: Optional[float]) -> Optional[int]:
    return int(t) if t is not None else None


def public_job(job: Job, include_result: bool = True) -> dict:
    """What a client may see of a job: never its owner, worker or stored paths. Lists leave the result
    out (``include_result=False``)."""
    body: dict[str, Any] = {
        "id": job.id,
        "object": "transcription.job",
        "status": job.status.value,
        "progress": round(job.progress, 4),
        "created_at": _unix(job.created_at),
        "started_at": _unix(job.started_at),
        "finished_at": _unix(job.finished_at),
        "filename": job.filename,
        "duration": job.duration,
        "language": job.language,
        "response_format": job.response_format,
        "word_timestamps": job.word_timestamps,
        "attempts": job.attempts,
        "error": job.error,
        "webhook": None,
    }
    if job.webhook_url:
        body["webhook"] = {
            "url": job.webhook_url,
            # null while the job runs; then pending (being sent or waiting to retry), delivered or gave_up
            "state": job.webhook_state,
            "attempts": [{"at": _unix(a.at), "status": a.status, "error": a.error} for a in job.webhook_attempts],
        }
    if job.status is JobStatus.SUCCEEDED and job.result is not None:
        if include_result:
            body["result"], _ = render_result(job)
        detected = job.result.get("language")
        if detected and not job.language:
            body["language"] = detected
    return body


def raw_result(job: Job) -> tuple[bytes, str]:
    """The result as a file: (body bytes, media type); the job must have succeeded."""
    value, media_type = render_result(job)
    if isinstance(value, str):
        return value.encode("utf-8"), media_type
    return json.dumps(value, ensure_ascii=False).encode("utf-8"), media_type
