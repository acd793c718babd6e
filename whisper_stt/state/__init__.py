"""Shared state behind one interface: the JSON key file (default) or Redis (``--state-url redis://...``)."""

from __future__ import annotations

from typing import Optional

from .base import (
    LIMIT_FIELDS,
    KeyInfo,
    Limits,
    QuotaExceeded,
    StateBackend,
    StateUnavailable,
    validate_limit_changes,
)
from .json_backend import JsonState

__all__ = ["LIMIT_FIELDS", "JsonState", "KeyInfo", "Limits", "QuotaExceeded", "StateBackend",
           "StateUnavailable", "open_state", "validate_limit_changes"]


def open_state(state_url: Optional[str], key_store=None, admin_key: Optional[str] = None) -> StateBackend:
    """``None``/empty -> the JSON store given; ``redis://`` / ``rediss://`` / ``unix://`` -> Redis."""
    if not state_url:
        if key_store is None:
            raise ValueError("The JSON state backend needs the key store.")
        return JsonState(key_store)
    if state_url.split("://", 1)[0] in ("redis", "rediss", "unix"):
        from .redis_backend import RedisState

        return RedisState(state_url, admin_override=admin_key)
    raise ValueError("--state-url must be redis://host:port/db, rediss://... or unix:///path (or empty for the "
                     "JSON key file).")
