"""Durable transcription jobs (POST /v1/jobs): stores, runner, webhooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import LEASE_S

if TYPE_CHECKING:
    from ..config import Settings
    from .base import JobStore


def open_job_store(settings: "Settings") -> "JobStore":
    """The job store ``settings`` ask for. Nothing is opened until the first call on it."""
    lease_s = getattr(settings, "job_lease_s", None) or LEASE_S
    if settings.state_url:  # the queue lives where keys and usage are shared: any replica or worker takes jobs
        from .redis_store import RedisJobStore

        return RedisJobStore(settings.state_url, lease_s=lease_s)
    from .sqlite_store import SqliteJobStore

    return SqliteJobStore(settings.jobs_dir, lease_s=lease_s)
