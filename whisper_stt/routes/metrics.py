"""GET /metrics: Prometheus text format. Open like /health unless ``metrics_require_key`` is set."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..context import AppState
from .deps import get_ctx, require_api_key
from .responses import METRICS_ERRORS

router = APIRouter(tags=["status"])


async def _metrics_auth(
    request: Request,
    ctx: AppState = Depends(get_ctx),
    x_api_key: Optional[str] = Header(None),
    authorization: Optional[str] = Header(None),
) -> None:
    if ctx.settings.metrics_require_key:
        await require_api_key(request, ctx, x_api_key, authorization)


@router.get(
    "/metrics",
    dependencies=[Depends(_metrics_auth)],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
               **METRICS_ERRORS},
)
async def metrics(ctx: AppState = Depends(get_ctx)) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
