"""Shared dependencies: the app context and the two kinds of authorisation."""

from __future__ import annotations

from typing import Optional

from fastapi import Depends, Header, HTTPException, Request

from ..app import AppState


def get_ctx(request: Request) -> AppState:
    return request.app.state.ctx


def _bearer(authorization: Optional[str]) -> Optional[str]:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


def require_api_key(
    ctx: AppState = Depends(get_ctx),
    x_api_key: Optional[str] = Header(None),
    authorization: Optional[str] = Header(None),
) -> None:
    """X-API-Key (the original's header) or Authorization: Bearer. 401 missing, 403 unknown."""
    if not ctx.settings.auth_enabled:
        return
    key = x_api_key or _bearer(authorization)
    if not key:
        raise HTTPException(401, "Missing API key: send it in the X-API-Key header.")
    if not ctx.keys.verify(key):
        raise HTTPException(403, "Invalid API key.")


def require_admin(ctx: AppState = Depends(get_ctx), x_admin_key: Optional[str] = Header(None)) -> None:
    if not ctx.keys.verify_admin(x_admin_key):
        raise HTTPException(403, "Invalid or missing admin key (X-Admin-Key header).")
