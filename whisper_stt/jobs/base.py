"""Durable transcription jobs: the record, its states, and the store every backend implements.

A job is made by ``POST /v1/jobs`` once its upload is stored under the jobs directory, waits in a queue,
is claimed by one worker (an HTTP replica's in-process runner, or a ``--worker`` process), reports
progress while it runs, and ends ``succeeded``, ``failed`` or ``cancelled``. Two stores implement
:class:`JobStore`: SQLite in ``--jobs-dir`` (the embedded default) and Redis (``--state-url``), where any
replica or worker may take the next job.

Durability rules every store keeps:

* A claim is a lease (``LEASE_S``) that the worker renews with :meth:`JobStore.heartbeat`. A worker killed
  with -9 stops renewing; :meth:`JobStore.requeue_stale` (or the engine's own reclaim, e.g. Redis Streams'
  pending entries) puts the job back in the queue and another claim takes it.
* :meth:`JobStore.finish` succeeds only for the worker holding the current lease of a running job, so a job
  is reported done once; a worker whose lease was taken over learns it from the return value and drops its
  result.
* Cancelling a queued job ends it at once; cancelling a running one ends it and the worker learns it at
  its next heartbeat.
* A job with a ``webhook_url`` that ends (finish or cancel) gets ``webhook_state = "pending"`` in the same
  atomic write, so its announcement is owed even if the process dies the next moment. A delivery is
  claimed like a job: :meth:`JobStore.claim_webhook` gives one worker the right to POST until
  ``webhook_due_at`` (its lease, or after a failed attempt the time of the next try). The finishing worker
  holds that claim from the finish on, so the normal case POSTs at once; any replica or worker sweeping
  :meth:`JobStore.due_webhooks` takes over a delivery whose holder died. ``delivered`` and ``gave_up``
  are final.
"""

from __future__ import annotations

import enum
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Protocol, runtime_checkable

LEASE_S = 30.0  # a claimed job's lease; renewed every HEARTBEAT_S while the worker lives
HEARTBEAT_S = 5.0
WEBHOOK_PENDING = "pending"  # owed: the job ended, no 2xx yet, attempts left
WEBHOOK_DELIVERED = "delivered"  # a receiver answered 2xx
WEBHOOK_GAVE_UP = "gave_up"  # refused for good (4xx, a forbidden address) or out of attempts
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class QueueFull(Exception):
    """The key already has its maximum of queued jobs (429 to the client)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this key already has {limit} queued jobs; wait for some to finish")
        self.limit = limit


class JobStoreUnavailable(RuntimeError):
    """The store cannot be reached (503); the message never holds a password."""


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex


@dataclass
class WebhookAttempt:
    at: float  # unix time the attempt was made
    status: Optional[int]  # HTTP status from the receiver; None when no answer came
    error: Optional[str] = None  # why it failed, short, for the job record


@dataclass
class Job:
    id: str
    owner: str  # the API key's digest (or "" without auth); another owner gets 404
    filename: str  # the client's file name, for people
    upload: str  # stored upload, relative to the jobs directory
    created_at: float = field(default_factory=time.time)
    status: JobStatus = JobStatus.QUEUED
    language: Optional[str] = None
    response_format: str = "json"
    word_timestamps: bool = False
    webhook_url: Optional[str] = None
    duration: Optional[float] = None  # seconds of audio, known once decoded
    progress: float = 0.0  # 0-1: audio seconds done / total; never goes down
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    attempts: int = 0  # how many times a worker claimed it (>1 after a crash)
    worker: Optional[str] = None  # who holds the current lease
    lease_until: Optional[float] = None
    result: Optional[dict] = None  # TranscriptionResult.to_dict(); rendered in response_format on GET
    error: Optional[str] = None  # why it failed, for the client
    webhook_attempts: list[WebhookAttempt] = field(default_factory=list)
    webhook_state: Optional[str] = None  # None (no webhook, or not ended yet), or one of WEBHOOK_*
    webhook_worker: Optional[str] = None  # who holds (or last held) the delivery claim
    webhook_due_at: Optional[float] = None  # pending: nobody but the holder may POST before this time

    def to_record(self) -> dict[str, Any]:
        """Plain JSON-able dict (what stores persist)."""
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> "Job":
        data = dict(data)
        data["status"] = JobStatus(data["status"])
        data["webhook_attempts"] = [WebhookAttempt(**a) for a in data.get("webhook_attempts") or []]
        return cls(**data)


@dataclass
class QueueCounts:
    """What /stats and /metrics show about the queue."""

    queued: int = 0
    running: int = 0
    oldest_queued_age_s: float = 0.0
    succeeded_total: int = 0
    failed_total: int = 0
    cancelled_total: int = 0
    webhooks_pending: int = 0  # ended jobs whose webhook is still owed (being sent, or waiting to retry)


@runtime_checkable
class JobStore(Protocol):
    async def create(self, job: Job, max_queued_per_owner: Optional[int]) -> None:
        """Store a new queued job and put it in the queue; QueueFull when its owner already has
        ``max_queued_per_owner`` queued jobs (None: no limit)."""

    async def get(self, job_id: str) -> Optional[Job]:
        ...

    async def list(self, owner: str, limit: int = 20, before: Optional[str] = None) -> list[Job]:
        """The owner's jobs, newest first; ``before`` is the id of the last job of the previous page."""

    async def claim(self, worker: str) -> Optional[Job]:
        """Take the oldest queued job (status -> running, attempts + 1, lease for LEASE_S); None if none."""

    async def heartbeat(self, job_id: str, worker: str, progress: Optional[float] = None,
                        duration: Optional[float] = None) -> bool:
        """Renew the lease and record progress (kept monotonic). False when the worker no longer holds
        the job (cancelled, or its lease lapsed and another worker took it): the worker must stop."""

    async def finish(self, job_id: str, worker: str, status: JobStatus, result: Optional[dict] = None,
                     error: Optional[str] = None) -> bool:
        """End a running job held by ``worker``. False (and nothing written) when it does not hold it."""

    async def cancel(self, job_id: str) -> Optional[Job]:
        """Cancel a queued or running job; an ended job is returned unchanged; None if unknown."""

    async def requeue_stale(self) -> int:
        """Put running jobs whose lease lapsed back in the queue; how many."""

    async def add_webhook_attempt(self, job_id: str, attempt: WebhookAttempt) -> None:
        ...

    async def claim_webhook(self, job_id: str, worker: str, lease_s: float) -> Optional[Job]:
        """Take the job's pending delivery for ``lease_s`` seconds (``webhook_worker`` = worker,
        ``webhook_due_at`` = now + lease_s) when it is pending and either ``worker`` already holds it or
        its ``webhook_due_at`` has passed. The job, or None (not pending, unknown, or another holds it)."""

    async def webhook_attempted(self, job_id: str, worker: str, attempt: Optional[WebhookAttempt],
                                state: str, due_at: Optional[float] = None) -> bool:
        """Record one delivery attempt (always, when given: attempts are facts) and move the delivery on:
        ``state`` WEBHOOK_PENDING with ``due_at`` (the next try; nobody else may take it before), or
        WEBHOOK_DELIVERED / WEBHOOK_GAVE_UP (final). The move is made only while ``worker`` holds the
        delivery, except that a 2xx always marks a pending delivery delivered. False when not applied."""

    async def due_webhooks(self, limit: int = 20) -> list[str]:
        """Ids of jobs whose delivery is pending and past ``webhook_due_at`` (its holder is late or gone,
        or its retry is due), oldest first; cheap, for a periodic sweep."""

    async def expired(self, ended_before: float) -> list[Job]:
        """Ended jobs that finished before ``ended_before`` (retention)."""

    async def delete(self, job_id: str) -> None:
        ...

    async def counts(self) -> QueueCounts:
        ...

    async def close(self) -> None:
        ...
