"""/admin/keys: generate, list (masked) and revoke API keys with X-Admin-Key."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.concurrency import run_in_threadpool

from ..app import AppState
from .deps import get_ctx, require_admin
from .responses import ADMIN_ERRORS, NOT_FOUND, GeneratedKey, KeyList, Revoked

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=ADMIN_ERRORS)


@router.post("/keys/generate", responses={200: {"model": GeneratedKey}})
async def generate_key(name: str = Query("", max_length=100), ctx: AppState = Depends(get_ctx)):
    key = await run_in_threadpool(ctx.keys.generate, name)
    return {
        "api_key": key,
        "name": name,
        "message": "Store this key now: the server keeps only its hash and cannot show it again.",
    }


@router.get("/keys", responses={200: {"model": KeyList}})
async def list_keys(ctx: AppState = Depends(get_ctx)):
    keys = ctx.keys.list()
    return {"keys": keys, "total": len(keys)}


@router.delete("/keys/{key}", responses={200: {"model": Revoked}, **NOT_FOUND})
async def revoke_key(key: str, ctx: AppState = Depends(get_ctx)):
    digest = await run_in_threadpool(ctx.keys.revoke, key)
    if digest is None:
        raise HTTPException(404, "No such API key.")
    ended = ctx.end_streams_of(digest)
    return {"success": True, "message": "API key revoked.", "streams_ended": ended}
