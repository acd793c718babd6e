"""/, /health and /stats."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from ..context import AppState
from ..gpu import cpu_info, gpu_info
from ..untrusted import SafeJSONResponse
from .deps import get_ctx, require_api_key
from .responses import API_KEY_ERRORS

router = APIRouter(tags=["status"])


@router.get("/")
async def root(ctx: AppState = Depends(get_ctx)):
    return {
        "status": "running",
        "model": ctx.engine.model_name,
        "device": ctx.engine.device,
        "compute_type": ctx.engine.compute_type,
        "auth_enabled": ctx.settings.auth_enabled,
        "connections": ctx.stats.load(),
        "uptime": ctx.stats.uptime_s,
    }


def _engine_stats(ctx: AppState) -> dict:
    e = ctx.engine
    return {
        "active_transcriptions": e.active,
        "queued_transcriptions": e.queued,
        "max_concurrent_transcriptions": e.max_concurrent,
        "completed_transcriptions": e.completed,
        "audio_seconds_processed": round(e.audio_seconds, 2),
        "processing_seconds": round(e.processing_seconds, 2),
        "real_time_factor": round(e.processing_seconds / e.audio_seconds, 4) if e.audio_seconds else None,
        "stream_lane": e.streams.snapshot(),
        # careful re-decodes (faster-whisper's own decoding) of fast results that may have lost speech
        "careful_decodes": dict(getattr(e, "fallbacks", {}) or {}),
    }


@router.get("/health")
async def health(ctx: AppState = Depends(get_ctx)):
    # While draining (SIGTERM) the answer is 503, so a load balancer or a Kubernetes readiness probe
    # stops sending new clients here while open streams get their finals.
    draining = ctx.shutting_down
    body = {
        "status": "draining" if draining else "healthy",
        "model_loaded": ctx.engine.model is not None,
        "model": ctx.engine.model_name,
        "device": ctx.engine.device,
        "compute_type": ctx.engine.compute_type,
        "connections": {
            "active": ctx.stats.active,
            "max": ctx.stats.max_connections,
            "load": ctx.stats.load(),
            "pending_auth": ctx.stats.pending,
            "max_pending_auth": ctx.stats.max_pending,
        },
        "transcriptions": _engine_stats(ctx),
        "state": ctx.state.health(),
        "uptime": ctx.stats.uptime_s,
    }
    if ctx.engine.device == "cuda":
        indexes = getattr(ctx.engine, "device_indexes", (0,))
        body["gpu"] = await run_in_threadpool(gpu_info, indexes[0])
        if len(indexes) > 1:  # a model and a stream lane per GPU (engine/lanes.py): each GPU, in lane order
            body["gpus"] = [dict(await run_in_threadpool(gpu_info, i) or {}, index=i) for i in indexes]
    else:
        body["gpu"] = None
        body["cpu"] = cpu_info(ctx.settings.cpu_threads)
        if getattr(ctx.engine, "stream_threads", 0):  # the stream lane's own model copy
            body["cpu"]["stream_lane_threads"] = ctx.engine.stream_threads
    return SafeJSONResponse(body, status_code=503) if draining else body


async def _job_stats(ctx: AppState):
    """POST /v1/jobs: the queue as the job store has it now (shared by the replicas using it)."""
    if ctx.jobs is None:
        return None
    c = await ctx.jobs.refresh_counts()
    return {
        "queued": c.queued,
        "running": c.running,
        "oldest_queued_age_s": c.oldest_queued_age_s,
        "succeeded_total": c.succeeded_total,
        "failed_total": c.failed_total,
        "cancelled_total": c.cancelled_total,
        "webhooks_pending": c.webhooks_pending,
        "running_here": len(ctx.jobs.runner.running),
        "workers_here": ctx.jobs.runner.slots,
    }


@router.get("/stats", dependencies=[Depends(require_api_key)], responses=API_KEY_ERRORS)
async def stats(ctx: AppState = Depends(get_ctx)):
    s = ctx.stats
    return {
        "connections": {
            "active": s.active,
            "max": s.max_connections,
            "pending_auth": s.pending,
            "max_pending_auth": s.max_pending,
            "refused": s.refused_connections,
            "total": s.total_connections,
            "details": [c.public() for c in s.connections.values()],
        },
        "transcriptions": _engine_stats(ctx),
        "requests": {"total": s.total_requests, "errors": s.total_errors},
        "jobs": await _job_stats(ctx),
        "model": ctx.engine.model_name,
        "device": ctx.engine.device,
        "uptime": s.uptime_s,
    }
