"""/admin/keys: generate (with limits), list (masked, with usage), change limits, usage and revoke API
keys with X-Admin-Key."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from ..context import AppState
from ..state import Limits, StateUnavailable, validate_limit_changes
from ..state.base import MAX_LIMIT
from ..untrusted import InvalidJSON, parse_json
from .deps import get_ctx, require_admin
from .responses import ADMIN_ERRORS, NOT_FOUND, GeneratedKey, KeyList, KeyUsage, LimitsOut, Revoked

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=ADMIN_ERRORS)


def _limits_from_query(max_streams: Optional[int], requests_per_minute: Optional[int],
                       audio_minutes_per_day: Optional[float]) -> Limits:
    return Limits(max_streams=max_streams, requests_per_minute=requests_per_minute,
                  audio_minutes_per_day=audio_minutes_per_day)


@router.post("/keys/generate", responses={200: {"model": GeneratedKey}})
async def generate_key(
    name: str = Query("", max_length=100),
    max_streams: Optional[int] = Query(None, ge=0, le=MAX_LIMIT,
                                       description="WebSocket streams open at once (all replicas)."),
    requests_per_minute: Optional[int] = Query(None, ge=0, le=MAX_LIMIT,
                                               description="Requests and new streams per minute."),
    audio_minutes_per_day: Optional[float] = Query(None, ge=0, le=MAX_LIMIT, allow_inf_nan=False,
                                                   description="Audio minutes per UTC day."),
    ctx: AppState = Depends(get_ctx),
):
    limits = _limits_from_query(max_streams, requests_per_minute, audio_minutes_per_day)
    key = await _state_call(ctx.state.generate(name, limits))
    return {
        "api_key": key,
        "name": name,
        "limits": limits.public(),
        "message": "Store this key now: the server keeps only its hash and cannot show it again.",
    }


@router.get("/keys", responses={200: {"model": KeyList}})
async def list_keys(ctx: AppState = Depends(get_ctx)):
    keys = await _state_call(ctx.state.list_keys())
    return {"keys": keys, "total": len(keys)}


@router.get("/keys/{key_id}/usage", responses={200: {"model": KeyUsage}, **NOT_FOUND})
async def key_usage(key_id: str, ctx: AppState = Depends(get_ctx)):
    """Requests, audio seconds and streams of one key: totals, per UTC day (newest first), open streams."""
    usage = await _state_call(ctx.state.usage(key_id))
    if usage is None:
        raise HTTPException(404, "No such API key.")
    return usage


_LIMITS_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "max_streams": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_LIMIT},
                "requests_per_minute": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_LIMIT},
                "audio_minutes_per_day": {"type": ["number", "null"], "minimum": 0, "maximum": MAX_LIMIT},
            },
        }}},
    }
}


@router.patch("/keys/{key_id}", responses={200: {"model": LimitsOut}, **NOT_FOUND}, openapi_extra=_LIMITS_BODY)
async def update_key(key_id: str, request: Request, ctx: AppState = Depends(get_ctx)):
    """Change a key's limits: a JSON object with any of max_streams, requests_per_minute,
    audio_minutes_per_day (null = unlimited). Applies on every replica within a second."""
    try:
        changes = validate_limit_changes(parse_json(await request.body()))
    except InvalidJSON as exc:
        raise HTTPException(400, f"The request body is {exc}.") from None
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    limits = await _state_call(ctx.state.update_limits(key_id, changes))
    if limits is None:
        raise HTTPException(404, "No such API key.")
    return {"id": key_id, "limits": limits}


@router.delete("/keys/{key}", responses={200: {"model": Revoked}, **NOT_FOUND})
async def revoke_key(key: str, ctx: AppState = Depends(get_ctx)):
    digest = await _state_call(ctx.state.revoke(key))
    if digest is None:
        raise HTTPException(404, "No such API key.")
    ended = ctx.end_streams_of(digest)  # here at once; other replicas within a second (their watchers)
    return {"success": True, "message": "API key revoked.", "streams_ended": ended}


async def _state_call(coro):
    try:
        return await coro
    except StateUnavailable as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
