"""Durable transcription jobs (POST /v1/jobs): stores, runner, webhooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Settings
    from .base import JobStore


def open_job_store(settings: "Settings") -> "JobStore":
    """The job store ``settings`` ask for. Nothing is opened until the first call on it."""
    # --- Redis (--state-url redis://...): the Redis job store goes here -----------------------------
    # if settings.state_url: ...
    from .sqlite_store import SqliteJobStore

    return SqliteJobStore(settings.jobs_dir)
