"""create_app(): the FastAPI application, built around objects made once by serve()."""

from __future__ import annotations

import logging
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .access_log import AccessLogMiddleware, install_client_fault_filter
from .config import Settings
from .context import AppState
from .engine import Engine
from .keys import KeyStore
from .limits import BodySizeLimitMiddleware
from .metrics import Metrics, MetricsMiddleware
from .state import JsonState, StateBackend
from .stats import ServerStats
from .untrusted import SafeJSONResponse

log = logging.getLogger(__name__)

# Envelope allowed around the file itself: multipart boundaries and form fields, JSON quoting.
_BODY_ENVELOPE = 256 * 1024


def create_app(
    settings: Settings, engine: Engine, keys: Optional[KeyStore], stats: Optional[ServerStats] = None,
    state: Optional[StateBackend] = None,
) -> FastAPI:
    """``keys``: the JSON key store (the default state backend); ``state``: another backend (Redis)."""
    from .routes import admin, deepgram, demo, jobs, metrics, openai, realtime, rest, status, ws
    from .routes.responses import install_openapi

    install_client_fault_filter()

    app = FastAPI(
        title="Whisper STT server",
        description="Self-hosted speech-to-text on faster-whisper: REST and WebSocket.",
        version="1.0.0",
        default_response_class=SafeJSONResponse,
    )
    app.state.ctx = AppState(settings, engine, keys, stats or ServerStats(
        settings.max_connections, settings.max_unauthenticated_connections),
        state=state if state is not None else JsonState(keys))
    app.state.ctx.metrics = Metrics(engine, app.state.ctx.stats)
    from .jobs import open_job_store
    from .jobs.service import JobService

    # Jobs: the store opens on first use; the runner starts on the serving loop (AppState.ensure_jobs).
    app.state.ctx.jobs = JobService(open_job_store(settings), engine, settings, app.state.ctx.state)
    app.state.ctx.metrics.live.jobs = app.state.ctx.jobs

    upload = settings.max_upload_bytes
    limits = {
        "/transcribe": upload + _BODY_ENVELOPE,
        "/transcribe/base64": (upload * 4) // 3 + 4 + _BODY_ENVELOPE,
        "/v1/audio/transcriptions": upload + _BODY_ENVELOPE,
        "/v1/audio/translations": upload + _BODY_ENVELOPE,
        "/v1/jobs": upload + _BODY_ENVELOPE,
    }
    app.add_middleware(
        BodySizeLimitMiddleware,
        limit_for=limits.get,
        message=f"Upload too large: the limit is {settings.max_upload_mb:g} MB.",
    )
    app.add_middleware(openai.OpenAIErrorMiddleware)  # /v1/ errors in OpenAI's shape, the 413 included
    app.add_middleware(AccessLogMiddleware)  # added late = outer: sees the 413s too
    # Outermost: counts everything, the 413s (labelled by path: they come before routing) included.
    app.add_middleware(MetricsMiddleware, metrics=app.state.ctx.metrics, prerouted_paths=limits)

    app.include_router(status.router)
    app.include_router(rest.router)
    app.include_router(admin.router)
    app.include_router(ws.router)
    app.include_router(demo.router)  # GET /demo: browser microphone page (web/)
    app.include_router(openai.router)  # /v1/audio/transcriptions, /v1/audio/translations, /v1/models
    app.include_router(metrics.router)  # GET /metrics (Prometheus)
    app.include_router(realtime.router)  # WebSocket /v1/realtime: OpenAI Realtime transcription sessions
    app.include_router(deepgram.router)  # WebSocket /v1/listen: Deepgram live transcription
    app.include_router(jobs.router)  # /v1/jobs: durable transcription jobs
    install_openapi(app)  # OpenAPI: the real 422 bodies, required form fields, keys as security schemes

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code >= 400:
            app.state.ctx.stats.total_errors += 1
        return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        app.state.ctx.stats.total_errors += 1
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body') or 'request'}: {err.get('msg')}"
            for err in exc.errors()
        )
        return SafeJSONResponse({"detail": f"Invalid request: {problems}"}, status_code=422)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect):
        # The client hung up before its body arrived: no error of ours, and nobody reads this answer.
        log.info("%s %s: the client disconnected before its body arrived", request.method, request.url.path)
        return SafeJSONResponse({"detail": "The client disconnected before the request body arrived."},
                                status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # A bug on our side: log it fully, tell the client only that it happened.
        log.exception("Unhandled error on %s %s", request.method, request.url.path)
        app.state.ctx.stats.total_errors += 1
        return SafeJSONResponse({"detail": "Internal server error."}, status_code=500)

    return app
