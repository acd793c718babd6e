"""The embedded job store: one SQLite file (``jobs.db``) in the jobs directory, stdlib ``sqlite3`` only.

Every job is one row: the columns the queue needs (status, owner, order, lease) beside the whole record as
JSON. Each write is one transaction opened with ``BEGIN IMMEDIATE``, which takes SQLite's write lock
before reading, so two processes sharing a jobs directory on one machine never claim the same job and a
``finish`` never races a ``cancel``. WAL mode lets readers (GET /v1/jobs) go on while a write runs.

The blocking calls run in a worker thread (``asyncio.to_thread``) behind a lock: one connection per store,
used by one thread at a time.

SQLite's locks need a local file system: the jobs directory may be shared by processes on one machine,
not over NFS (use Redis to share jobs between machines).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from .base import (LEASE_S, WEBHOOK_DELIVERED, WEBHOOK_PENDING, Job, JobStatus, JobStoreUnavailable, QueueCounts,
                   QueueFull, WebhookAttempt)

T = TypeVar("T")

DB_NAME = "jobs.db"
BUSY_TIMEOUT_MS = 15000  # another process holding the write lock: wait this long before giving up

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order (queue order, and newest-first listing)
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    finished_at REAL,
    worker TEXT,
    lease_until REAL,
    record TEXT NOT NULL,
    webhook_state TEXT,  -- the record's webhook_state / webhook_due_at, as columns for the delivery sweep
    webhook_due REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq);
CREATE TABLE IF NOT EXISTS totals (status TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""

# Made after the columns exist (a jobs.db from before durable webhooks gets them by ALTER TABLE first).
# Partial: only owed deliveries are indexed, so the sweep every few seconds reads a handful of entries.
_WEBHOOK_INDEX = """
CREATE INDEX IF NOT EXISTS jobs_webhooks_pending ON jobs (webhook_due) WHERE webhook_state = 'pending';
"""


def local_worker_alive(worker: Optional[str]) -> Optional[bool]:
    """For a worker id made by :func:`whisper_stt.jobs.runner.default_worker_id` ("host:pid:..."):
    whether that process still lives, when it ran on this machine; None when it cannot be told."""
    if not worker:
        return None
    parts = worker.split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return None
    pid = int(parts[1])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return None
    return True


class SqliteJobStore:
    """:class:`whisper_stt.jobs.base.JobStore` on a SQLite file in ``jobs_dir``."""

    name = "sqlite"

    def __init__(self, jobs_dir: Path | str, lease_s: float = LEASE_S) -> None:
        self.dir = Path(jobs_dir)
        self.lease_s = float(lease_s)
        self.path = self.dir / DB_NAME
        self._lock = threading.Lock()
        self._conn: Optional[sqlite3.Connection] = None

    # --- plumbing --------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a power cut loses at most the last commits
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                conn.executescript(_SCHEMA)
                have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
                for column, kind in (("webhook_state", "TEXT"), ("webhook_due", "REAL")):
                    if column not in have:
                        conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
                conn.executescript(_WEBHOOK_INDEX)
            except (sqlite3.Error, OSError) as exc:
                raise JobStoreUnavailable(f"cannot open the job store {self.path}: {exc}") from None
            self._conn = conn
        return self._conn

    def _run_sync(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        with self._lock:
            conn = self._connect()
            try:
                if write:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        value = fn(conn)
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
                    return value
                return fn(conn)
            except sqlite3.OperationalError as exc:
                raise JobStoreUnavailable(f"job store {self.path}: {exc}") from None

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._run_sync, fn, False)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._run_sync, fn, True)

    @staticmethod
    def _load(row) -> Job:
        return Job.from_record(json.loads(row[0]))

    @staticmethod
    def _get(conn: sqlite3.Connection, job_id: str) -> Optional[Job]:
        row = conn.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return SqliteJobStore._load(row) if row else None

    @staticmethod
    def _save(conn: sqlite3.Connection, job: Job) -> None:
        conn.execute(
            "UPDATE jobs SET status = ?, finished_at = ?, worker = ?, lease_until = ?, record = ?, "
            "webhook_state = ?, webhook_due = ? WHERE id = ?",
            (job.status.value, job.finished_at, job.worker, job.lease_until, json.dumps(job.to_record()),
             job.webhook_state, job.webhook_due_at, job.id),
        )

    def _owe_webhook(self, job: Job, holder: Optional[str], now: float) -> None:
        """The job just ended: its webhook (if any) is owed from this very write on. ``holder`` (the worker
        that finished it) may POST at once; anyone else only after the lease."""
        if job.webhook_url and job.webhook_state is None:
            job.webhook_state = WEBHOOK_PENDING
            job.webhook_worker = holder
            job.webhook_due_at = now + self.lease_s if holder else now

    @staticmethod
    def _count_end(conn: sqlite3.Connection, status: JobStatus) -> None:
        # Totals outlive retention (the rows go, the counters stay): /metrics counters must not go down.
        conn.execute("INSERT INTO totals (status, n) VALUES (?, 1) "
                     "ON CONFLICT(status) DO UPDATE SET n = n + 1", (status.value,))

    # --- JobStore ----------------------------------------------------------------------------------
    async def create(self, job: Job, max_queued_per_owner: Optional[int]) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            if max_queued_per_owner is not None:
                (queued,) = conn.execute("SELECT COUNT(*) FROM jobs WHERE owner = ? AND status = ?",
                                         (job.owner, JobStatus.QUEUED.value)).fetchone()
                if queued >= max_queued_per_owner:
                    raise QueueFull(max_queued_per_owner)
            conn.execute(
                "INSERT INTO jobs (id, owner, status, finished_at, worker, lease_until, record) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.owner, job.status.value, job.finished_at, job.worker, job.lease_until,
                 json.dumps(job.to_record())),
            )

        await self._write(tx)

    async def get(self, job_id: str) -> Optional[Job]:
        return await self._read(lambda conn: self._get(conn, job_id))

    async def list(self, owner: str, limit: int = 20, before: Optional[str] = None) -> list[Job]:
        def q(conn: sqlite3.Connection) -> list[Job]:
            bound = None
            if before is not None:
                row = conn.execute("SELECT seq FROM jobs WHERE id = ? AND owner = ?", (before, owner)).fetchone()
                if row is None:
                    return []  # an unknown cursor (or another owner's job) lists nothing rather than page 1
                bound = row[0]
            if bound is None:
                rows = conn.execute("SELECT record FROM jobs WHERE owner = ? ORDER BY seq DESC LIMIT ?",
                                    (owner, limit)).fetchall()
            else:
                rows = conn.execute("SELECT record FROM jobs WHERE owner = ? AND seq < ? ORDER BY seq DESC "
                                    "LIMIT ?", (owner, bound, limit)).fetchall()
            return [self._load(r) for r in rows]

        return await self._read(q)

    async def claim(self, worker: str) -> Optional[Job]:
        def tx(conn: sqlite3.Connection) -> Optional[Job]:
            row = conn.execute("SELECT record FROM jobs WHERE status = ? ORDER BY seq LIMIT 1",
                               (JobStatus.QUEUED.value,)).fetchone()
            if row is None:
                return None
            job = self._load(row)
            now = time.time()
            job.status = JobStatus.RUNNING
            job.attempts += 1
            job.worker = worker
            job.lease_until = now + self.lease_s
            job.started_at = job.started_at or now
            self._save(conn, job)
            return job

        return await self._write(tx)

    async def heartbeat(self, job_id: str, worker: str, progress: Optional[float] = None,
                        duration: Optional[float] = None) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            job = self._get(conn, job_id)
            if job is None or job.status is not JobStatus.RUNNING or job.worker != worker:
                return False
            job.lease_until = time.time() + self.lease_s
            if progress is not None:
                job.progress = max(job.progress, min(1.0, max(0.0, float(progress))))
            if duration is not None:
                job.duration = duration
            self._save(conn, job)
            return True

        return await self._write(tx)

    async def finish(self, job_id: str, worker: str, status: JobStatus, result: Optional[dict] = None,
                     error: Optional[str] = None) -> bool:
        if not status.ended:
            raise ValueError(f"finish needs an end state, not {status.value}")

        def tx(conn: sqlite3.Connection) -> bool:
            job = self._get(conn, job_id)
            if job is None or job.status is not JobStatus.RUNNING or job.worker != worker:
                return False
            job.status = status
            job.finished_at = time.time()
            job.lease_until = None
            job.result = result
            job.error = error
            if status is JobStatus.SUCCEEDED:
                job.progress = 1.0
            self._owe_webhook(job, worker, job.finished_at)
            self._save(conn, job)
            self._count_end(conn, status)
            return True

        return await self._write(tx)

    async def cancel(self, job_id: str) -> Optional[Job]:
        def tx(conn: sqlite3.Connection) -> Optional[Job]:
            job = self._get(conn, job_id)
            if job is None or job.status.ended:
                return job
            job.status = JobStatus.CANCELLED
            job.finished_at = time.time()
            job.lease_until = None
            self._owe_webhook(job, None, job.finished_at)
            self._save(conn, job)
            self._count_end(conn, JobStatus.CANCELLED)
            return job

        return await self._write(tx)

    async def requeue_stale(self) -> int:
        def tx(conn: sqlite3.Connection) -> int:
            now = time.time()
            rows = conn.execute("SELECT record FROM jobs WHERE status = ?", (JobStatus.RUNNING.value,)).fetchall()
            moved = 0
            for row in rows:
                job = self._load(row)
                lapsed = job.lease_until is None or job.lease_until < now
                # A worker of this machine that is gone (kill -9) need not be waited for: its lease would
                # only lapse later. Only provable deaths count; anything unclear waits for the lease.
                if not lapsed and local_worker_alive(job.worker) is not False:
                    continue
                job.status = JobStatus.QUEUED
                job.worker = None
                job.lease_until = None
                self._save(conn, job)
                moved += 1
            return moved

        return await self._write(tx)

    async def release(self, job_id: str, worker: str) -> bool:
        """A worker stopping cleanly hands its running job back to the queue at once (no lease wait);
        ``attempts`` keeps counting the claim. False when it does not hold the job."""

        def tx(conn: sqlite3.Connection) -> bool:
            job = self._get(conn, job_id)
            if job is None or job.status is not JobStatus.RUNNING or job.worker != worker:
                return False
            job.status = JobStatus.QUEUED
            job.worker = None
            job.lease_until = None
            self._save(conn, job)
            return True

        return await self._write(tx)

    async def add_webhook_attempt(self, job_id: str, attempt: WebhookAttempt) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            job = self._get(conn, job_id)
            if job is not None:
                job.webhook_attempts.append(attempt)
                self._save(conn, job)

        await self._write(tx)

    async def claim_webhook(self, job_id: str, worker: str, lease_s: float) -> Optional[Job]:
        def tx(conn: sqlite3.Connection) -> Optional[Job]:
            job = self._get(conn, job_id)
            if job is None or job.webhook_state != WEBHOOK_PENDING:
                return None
            now = time.time()
            if job.webhook_worker != worker and (job.webhook_due_at or 0.0) > now:
                return None
            job.webhook_worker = worker
            job.webhook_due_at = now + lease_s
            self._save(conn, job)
            return job

        return await self._write(tx)

    async def webhook_attempted(self, job_id: str, worker: str, attempt: Optional[WebhookAttempt],
                                state: str, due_at: Optional[float] = None) -> bool:
        if state == WEBHOOK_PENDING and due_at is None:
            raise ValueError("a pending delivery needs the time of its next try")

        def tx(conn: sqlite3.Connection) -> bool:
            job = self._get(conn, job_id)
            if job is None:
                return False
            if attempt is not None:
                job.webhook_attempts.append(attempt)
            applied = job.webhook_state == WEBHOOK_PENDING and (job.webhook_worker == worker
                                                                 or state == WEBHOOK_DELIVERED)
            if applied:
                job.webhook_state = state
                job.webhook_worker = worker
                job.webhook_due_at = due_at if state == WEBHOOK_PENDING else None
            self._save(conn, job)
            return applied

        return await self._write(tx)

    async def due_webhooks(self, limit: int = 20) -> list[str]:
        def q(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT id FROM jobs WHERE webhook_state = ? AND webhook_due <= ? "
                                "ORDER BY webhook_due LIMIT ?", (WEBHOOK_PENDING, time.time(), limit)).fetchall()
            return [r[0] for r in rows]

        return await self._read(q)

    async def expired(self, ended_before: float) -> list[Job]:
        def q(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute("SELECT record FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? "
                                "AND status IN (?, ?, ?) ORDER BY seq",
                                (ended_before, JobStatus.SUCCEEDED.value, JobStatus.FAILED.value,
                                 JobStatus.CANCELLED.value)).fetchall()
            return [self._load(r) for r in rows]

        return await self._read(q)

    async def delete(self, job_id: str) -> None:
        await self._write(lambda conn: conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)) and None)

    async def counts(self) -> QueueCounts:
        def q(conn: sqlite3.Connection) -> QueueCounts:
            by_status = dict(conn.execute("SELECT status, COUNT(*) FROM jobs WHERE status IN (?, ?) "
                                          "GROUP BY status", (JobStatus.QUEUED.value,
                                                              JobStatus.RUNNING.value)).fetchall())
            totals = dict(conn.execute("SELECT status, n FROM totals").fetchall())
            (pending,) = conn.execute("SELECT COUNT(*) FROM jobs WHERE webhook_state = ?",
                                      (WEBHOOK_PENDING,)).fetchone()
            oldest = conn.execute("SELECT record FROM jobs WHERE status = ? ORDER BY seq LIMIT 1",
                                  (JobStatus.QUEUED.value,)).fetchone()
            age = max(0.0, time.time() - self._load(oldest).created_at) if oldest else 0.0
            return QueueCounts(
                queued=by_status.get(JobStatus.QUEUED.value, 0),
                running=by_status.get(JobStatus.RUNNING.value, 0),
                oldest_queued_age_s=round(age, 3),
                succeeded_total=totals.get(JobStatus.SUCCEEDED.value, 0),
                failed_total=totals.get(JobStatus.FAILED.value, 0),
                cancelled_total=totals.get(JobStatus.CANCELLED.value, 0),
                webhooks_pending=pending,
            )

        return await self._read(q)

    async def close(self) -> None:
        def shut() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(shut)

    def health(self) -> dict[str, Any]:
        return {"backend": self.name, "path": str(self.path)}
