"""Shared dependencies: the app context and the two kinds of authorisation."""

from __future__ import annotations

from typing import Optional

from fastapi import Depends, Header, HTTPException, Request

from ..context import AppState
from ..state import KeyInfo, QuotaExceeded, StateUnavailable


def get_ctx(request: Request) -> AppState:
    return request.app.state.ctx


def _bearer(authorization: Optional[str]) -> Optional[str]:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


async def authorize(ctx: AppState, request: Request, key: Optional[str]) -> Optional[KeyInfo]:
    """Verify an API key and take one request from its limits. Returns the key (None: unknown key).

    Raises StateUnavailable (the backend is away and the key was not verified recently) and
    QuotaExceeded; the callers turn them into their protocol's 503 / 429.
    """
    await ctx.ensure_started()
    info = await ctx.state.verify(key)
    if info is None:
        return None
    await ctx.state.check_request(info)
    ctx.state.record(info.digest, requests=1)
    request.state.key_info = info
    return info


def quota_headers(exc: QuotaExceeded) -> dict:
    return {"Retry-After": str(exc.retry_after)}


async def require_api_key(
    request: Request,
    ctx: AppState = Depends(get_ctx),
    x_api_key: Optional[str] = Header(None),
    authorization: Optional[str] = Header(None),
) -> None:
    """X-API-Key (the original's header) or Authorization: Bearer. 401 missing, 403 unknown, 429 over a
    per-key limit (with Retry-After), 503 when the state backend is away."""
    if not ctx.settings.auth_enabled:
        return
    key = x_api_key or _bearer(authorization)
    if not key:
        raise HTTPException(401, "Missing API key: send it in the X-API-Key header.")
    try:
        info = await authorize(ctx, request, key)
    except StateUnavailable as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
    except QuotaExceeded as exc:
        raise HTTPException(429, str(exc), headers=quota_headers(exc)) from None
    if info is None:
        raise HTTPException(403, "Invalid API key.")


async def require_admin(ctx: AppState = Depends(get_ctx), x_admin_key: Optional[str] = Header(None)) -> None:
    try:
        ok = await ctx.state.verify_admin(x_admin_key)
    except StateUnavailable as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
    if not ok:
        raise HTTPException(403, "Invalid or missing admin key (X-Admin-Key header).")


def record_audio(request: Request, ctx: AppState, seconds: float) -> None:
    """Count transcribed audio against the key that asked (a no-op without auth)."""
    info = getattr(request.state, "key_info", None)
    if info is not None and seconds:
        ctx.state.record(info.digest, audio_s=seconds)
