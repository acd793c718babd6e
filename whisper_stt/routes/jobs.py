"""Durable transcription jobs: POST /v1/jobs, GET /v1/jobs[/{id}[/result]], DELETE /v1/jobs/{id}.

A job belongs to the API key that made it (the key's digest is its owner); any other key gets 404, as if
the job did not exist. Errors come in OpenAI's shape like the rest of /v1 (OpenAIErrorMiddleware).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional, Union

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ..context import AppState
from ..engine import UnsupportedLanguageError
from ..jobs.base import RESPONSE_FORMATS, Job, JobStatus, JobStoreUnavailable, QueueFull, new_job_id
from ..jobs.files import EmptyUpload, UploadTooLarge, delete_job_files, store_upload
from ..jobs.render import public_job, raw_result
from ..untrusted import echo
from .deps import get_ctx
from .openai import api_error, require_openai_key
from .responses import OPENAI_AUTH_ERRORS, OpenAIError

log = logging.getLogger(__name__)

QUEUE_FULL_RETRY_S = 30
MAX_FILENAME = 200


# --- what the routes answer (OpenAPI) --------------------------------------------------------------
class WebhookAttemptOut(BaseModel):
    at: int = Field(description="Unix seconds.")
    status: Optional[int] = Field(description="The receiver's HTTP status; null when it did not answer.")
    error: Optional[str]


class WebhookOut(BaseModel):
    url: str
    state: Optional[str] = Field(description="null while the job runs; then pending (being sent or waiting to "
                                 "retry), delivered (a 2xx came) or gave_up.")
    attempts: list[WebhookAttemptOut]


class JobOut(BaseModel):
    id: str
    object: str = Field(description="Always 'transcription.job'.")
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    progress: float = Field(description="0-1: audio seconds transcribed / total; never goes down.")
    created_at: int = Field(description="Unix seconds.")
    started_at: Optional[int]
    finished_at: Optional[int]
    filename: str
    duration: Optional[float] = Field(description="Seconds of audio, once decoded.")
    language: Optional[str] = Field(description="As asked, or as detected once the job succeeded.")
    response_format: str
    word_timestamps: bool
    attempts: int = Field(description="Times a worker took the job (2 after a crash and a resume).")
    error: Optional[str] = Field(description="Why the job failed.")
    webhook: Optional[WebhookOut]
    result: Optional[Union[dict[str, Any], str]] = Field(
        None, description="When succeeded (not in lists): the transcription in response_format, an object "
        "for json / verbose_json, the text of the file for text / srt / vtt.")


class JobList(BaseModel):
    object: str = Field(description="Always 'list'.")
    data: list[JobOut] = Field(description="Newest first, without results.")
    has_more: bool
    next: Optional[str] = Field(description="Pass as 'before' for the next page; null on the last page.")


def _errors(described: dict[int, str]) -> dict:
    return {status: {"model": OpenAIError, "description": text} for status, text in described.items()}


_NOT_FOUND = {404: "No job with this id belongs to this API key."}
SUBMIT_ERRORS = _errors({
    400: "Unknown response_format or language, an empty file, or a webhook_url that is refused.",
    413: "The upload is over the size limit.",
    422: "The file field is missing or a form field is invalid.",
    429: "A per-key limit is used up, or the key has its maximum of queued jobs; see Retry-After.",
    503: "The job store is unavailable.",
})
READ_ERRORS = _errors({**_NOT_FOUND, 503: "The job store is unavailable."})
RESULT_ERRORS = _errors({**_NOT_FOUND, 409: "The job has not succeeded (yet): no result.",
                         503: "The job store is unavailable."})
LIST_ERRORS = _errors({422: "limit is not between 1 and 100.", 503: "The job store is unavailable."})
CANCEL_ERRORS = _errors({**_NOT_FOUND, 409: "The job already ended (succeeded or failed).",
                         503: "The job store is unavailable."})

router = APIRouter(prefix="/v1", tags=["jobs"], dependencies=[Depends(require_openai_key)],
                   responses=OPENAI_AUTH_ERRORS)


# --- helpers -------------------------------------------------------------------------------------------
def _owner(request: Request) -> str:
    info = getattr(request.state, "key_info", None)
    return info.digest if info is not None else ""


async def _service(ctx: AppState):
    await ctx.ensure_jobs()
    return ctx.jobs


def _unavailable(exc: Exception):
    return api_error(503, f"The job store is unavailable: {exc}", code="service_unavailable",
                     headers={"Retry-After": "5"})


async def _owned_job(ctx: AppState, request: Request, job_id: str) -> Job:
    service = await _service(ctx)
    try:
        job = await service.store.get(job_id)
    except JobStoreUnavailable as exc:
        raise _unavailable(exc) from None
    if job is None or job.owner != _owner(request):
        raise api_error(404, f"No job {echo(job_id)}.", param="job_id", code="job_not_found")
    return job


async def _check_webhook(url: str, allow_private: bool) -> str:
    """The URL to store, or a 400 saying why it is refused (the check resolves the host: off the loop)."""
    try:
        from ..jobs.webhook import WebhookRefused, check_url
    except ImportError:  # webhook delivery not in this build: nothing to check against
        return url
    try:
        return await asyncio.to_thread(check_url, url, allow_private)
    except WebhookRefused as exc:
        raise api_error(400, str(exc), param="webhook_url", code="invalid_webhook_url") from None


# --- routes ----------------------------------------------------------------------------------------------
@router.post("/jobs", status_code=202, responses={202: {"model": JobOut}, **SUBMIT_ERRORS})
async def create_job(
    request: Request,
    file: Optional[UploadFile] = File(None, description="Audio or video file (wav, mp3, m4a, ogg, flac ...)."),
    language: Optional[str] = Form(None, description="ISO 639-1 code; empty for auto-detection."),
    response_format: Optional[str] = Form(None, description="json (default), text, srt, vtt or verbose_json."),
    word_timestamps: bool = Form(False, description="Word times in verbose_json."),
    webhook_url: Optional[str] = Form(None, description="http(s) URL that gets the job when it ends."),
    ctx: AppState = Depends(get_ctx),
):
    """Queue a file for transcription; answers 202 as soon as the upload is stored. Poll
    GET /v1/jobs/{id} (or wait for the webhook) for progress and the result."""
    if file is None or not hasattr(file, "file"):
        raise api_error(422, "Missing 'file': the audio file to transcribe (multipart form field).", param="file")
    fmt = (response_format or "json").strip().lower()
    if fmt not in RESPONSE_FORMATS:
        raise api_error(400, f"Unsupported response_format {echo(response_format)}; use one of "
                        f"{', '.join(RESPONSE_FORMATS)}.", param="response_format")
    try:
        lang = ctx.engine.normalize_language(language)
    except UnsupportedLanguageError as exc:
        raise api_error(400, str(exc), param="language") from None
    hook = (webhook_url or "").strip() or None
    if hook is not None:
        hook = await _check_webhook(hook, getattr(ctx.settings, "webhook_allow_private", False))
    service = await _service(ctx)

    job_id = new_job_id()
    jobs_dir = ctx.settings.jobs_dir
    try:
        upload, _size = await asyncio.to_thread(store_upload, jobs_dir, job_id, file.file,
                                                ctx.settings.max_upload_bytes)
    except EmptyUpload as exc:
        raise api_error(400, str(exc), param="file") from None
    except UploadTooLarge:
        raise api_error(413, f"Upload too large: the limit is {ctx.settings.max_upload_mb:g} MB.", param="file",
                        code="file_too_large") from None
    except OSError:
        log.exception("Storing a job upload under %s failed", jobs_dir)
        raise api_error(503, "The server cannot store the upload right now.", code="service_unavailable",
                        headers={"Retry-After": "30"}) from None
    job = Job(id=job_id, owner=_owner(request), filename=(file.filename or "upload")[:MAX_FILENAME],
              upload=upload, language=lang, response_format=fmt, word_timestamps=word_timestamps,
              webhook_url=hook)
    limit = ctx.settings.max_queued_jobs_per_key or None
    try:
        await service.store.create(job, limit)
    except QueueFull as exc:
        await asyncio.to_thread(delete_job_files, jobs_dir, job_id)
        raise api_error(429, str(exc), code="too_many_queued_jobs",
                        headers={"Retry-After": str(QUEUE_FULL_RETRY_S)}) from None
    except JobStoreUnavailable as exc:
        await asyncio.to_thread(delete_job_files, jobs_dir, job_id)
        raise _unavailable(exc) from None
    service.submitted()
    ctx.stats.total_requests += 1
    return JSONResponse(public_job(job), status_code=202)


@router.get("/jobs", responses={200: {"model": JobList}, **LIST_ERRORS})
async def list_jobs(
    request: Request,
    limit: int = Query(20, ge=1, le=100, description="Jobs per page (1-100)."),
    before: Optional[str] = Query(None, max_length=100, description="The 'next' value of the previous page."),
    ctx: AppState = Depends(get_ctx),
):
    """This key's jobs, newest first (without their results: GET each job for that)."""
    service = await _service(ctx)
    try:
        jobs = await service.store.list(_owner(request), limit + 1, before or None)
    except JobStoreUnavailable as exc:
        raise _unavailable(exc) from None
    page = jobs[:limit]
    has_more = len(jobs) > limit
    return {"object": "list", "data": [public_job(j, include_result=False) for j in page],
            "has_more": has_more, "next": page[-1].id if has_more and page else None}


@router.get("/jobs/{job_id}", responses={200: {"model": JobOut}, **READ_ERRORS})
async def get_job(job_id: str, request: Request, ctx: AppState = Depends(get_ctx)):
    """Status, progress, timestamps and (once succeeded) the result in the job's response_format."""
    return public_job(await _owned_job(ctx, request, job_id))


@router.get(
    "/jobs/{job_id}/result",
    responses={
        200: {"description": "The result file: JSON for json / verbose_json, plain text for text and srt, "
                             "text/vtt for vtt.",
              "content": {"application/json": {"schema": {"type": "object"}},
                          "text/plain": {"schema": {"type": "string"}},
                          "text/vtt": {"schema": {"type": "string"}}}},
        **RESULT_ERRORS,
    },
)
async def get_job_result(job_id: str, request: Request, ctx: AppState = Depends(get_ctx)):
    """The result alone, as a file (e.g. the SRT itself); 409 until the job has succeeded."""
    job = await _owned_job(ctx, request, job_id)
    if job.status is not JobStatus.SUCCEEDED or job.result is None:
        raise api_error(409, f"Job {job.id} is {job.status.value}: there is no result"
                        + (" yet." if not job.status.ended else "."), code="job_not_succeeded")
    body, media_type = raw_result(job)
    return Response(body, media_type=media_type)


@router.delete("/jobs/{job_id}", responses={200: {"model": JobOut}, **CANCEL_ERRORS})
async def cancel_job(job_id: str, request: Request, ctx: AppState = Depends(get_ctx)):
    """Cancel a queued or running job and delete its upload (a running one stops within seconds)."""
    job = await _owned_job(ctx, request, job_id)
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise api_error(409, f"Job {job.id} already {job.status.value}; it is deleted after "
                        f"{ctx.settings.jobs_retention_days:g} day(s).", code="job_ended")
    service = ctx.jobs
    try:
        cancelled = await service.store.cancel(job.id)
    except JobStoreUnavailable as exc:
        raise _unavailable(exc) from None
    if cancelled is None:
        raise api_error(404, f"No job {echo(job_id)}.", param="job_id", code="job_not_found")
    if cancelled.status is JobStatus.CANCELLED and not job.status.ended:
        await service.cancelled(cancelled)  # this request ended it: free the files, tell the webhook
    elif cancelled.status is not JobStatus.CANCELLED:  # it ended meanwhile
        raise api_error(409, f"Job {job.id} already {cancelled.status.value}.", code="job_ended")
    return public_job(cancelled)
