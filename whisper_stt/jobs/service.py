"""JobService: what one server process runs for jobs, around the store: the runner (when this process
takes jobs), the sweep of owed webhooks, the retention sweep, and the queue figures /stats and /metrics show.

Every process with a JobService (HTTP replicas, also with ``--job-workers 0``, and ``--worker`` processes)
sweeps the store for pending webhook deliveries at start and every ``WEBHOOK_SWEEP_S``: a job whose end was
written by a process that died before its receiver answered 2xx is announced by whichever process claims
it first, once its holder's lease (or its retry time) has passed."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Optional

from .base import Job, JobStatus, JobStoreUnavailable, QueueCounts
from .files import delete_job_files
from .runner import JobRunner

if TYPE_CHECKING:
    from ..config import Settings
    from ..engine import Engine
    from ..state import StateBackend
    from .base import JobStore

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 3600.0
COUNTS_MAX_AGE_S = 2.0  # /metrics is scraped synchronously: it shows figures at most this old
WEBHOOK_SWEEP_S = 3.0  # how often owed webhooks are looked for (one indexed query / ZRANGEBYSCORE)


class JobService:
    def __init__(self, store: "JobStore", engine: "Engine", settings: "Settings",
                 state: Optional["StateBackend"] = None) -> None:
        self.store = store
        self.settings = settings
        self.state = state
        self.runner = JobRunner(store, engine, settings, on_end=self.job_ended)
        self.counts = QueueCounts()  # the latest figures (refreshed by refresh_counts)
        self._counts_at = 0.0
        self._counts_failing = False
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    async def start(self) -> None:
        """Start once per event loop (idempotent; called before each jobs request). A test client that
        ran an earlier loop left dead tasks behind: they are forgotten and started again here."""
        loop = asyncio.get_running_loop()
        if self._tasks and self._loop is loop:
            return
        if self._tasks:
            self._tasks = []
            self.runner._tasks = []
        if self._loop is not loop:
            self.runner.delivering.clear()  # deliveries of a dead loop never ran their cleanup
        self._loop = loop
        await self._webhook_secret_line()
        await self.runner.start()
        self._tasks.append(asyncio.create_task(self._retention_loop(), name="job-retention"))
        self._tasks.append(asyncio.create_task(self._counts_loop(), name="job-counts"))
        self._tasks.append(asyncio.create_task(self._webhook_loop(), name="job-webhooks"))

    async def _webhook_secret_line(self) -> None:
        # Made and named at start rather than at the first delivery, so operators can hand the secret to
        # receivers beforehand; the line names where it is, never its value.
        from .webhook import ensure_webhook_secret

        try:
            log.info("%s", await asyncio.to_thread(ensure_webhook_secret, self.settings))
        except (OSError, RuntimeError) as exc:
            log.warning("Webhook secret not available: %s (deliveries will try again)", exc)

    @property
    def started(self) -> bool:
        return bool(self._tasks)

    async def stop(self) -> None:
        # The sweeps first, so no delivery starts while the runner winds down (owed ones stay in the store).
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.runner.stop()
        if self._background:
            await asyncio.wait(list(self._background), timeout=5)
        try:
            await self.store.close()
        except Exception:
            log.exception("Closing the job store failed")

    # --- what the routes call ------------------------------------------------------------------
    def submitted(self) -> None:
        self.runner.wake()

    async def job_ended(self, job: Job) -> None:
        """The runner wrote a job's end: count its audio against the key (succeeded jobs only: a failed
        or cancelled job transcribed nothing the client receives)."""
        if self.state is not None and job.owner and job.status is JobStatus.SUCCEEDED and job.duration:
            self.state.record(job.owner, audio_s=job.duration)

    async def cancelled(self, job: Job) -> None:
        """A client cancelled a job: free its files (a running worker notices at its next heartbeat and
        stops), and tell its webhook."""
        await asyncio.to_thread(delete_job_files, self.settings.jobs_dir, job.id)
        if job.webhook_url:
            self.runner.deliver(job)

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # --- owed webhooks -------------------------------------------------------------------------------
    async def sweep_webhooks(self) -> int:
        """Start delivering every pending webhook that is due (its holder is gone or its retry time came);
        how many deliveries were started here. Each claims first, so among processes one sends it."""
        started = 0
        for job_id in await self.store.due_webhooks():
            if job_id in self.runner.delivering:
                continue
            job = await self.store.get(job_id)
            if job is not None and self.runner.deliver(job) is not None:
                started += 1
        return started

    async def _webhook_loop(self) -> None:
        failing = False
        while True:
            try:
                await self.sweep_webhooks()
                failing = False
            except JobStoreUnavailable as exc:
                if not failing:  # once per outage
                    log.warning("Webhook sweep skipped: %s", exc)
                failing = True
            except Exception:
                log.exception("Webhook sweep failed")
            await asyncio.sleep(WEBHOOK_SWEEP_S)

    # --- figures ----------------------------------------------------------------------------------
    async def refresh_counts(self) -> QueueCounts:
        try:
            self.counts = await self.store.counts()
            self._counts_at = time.monotonic()
            self._counts_failing = False
        except JobStoreUnavailable as exc:
            if not self._counts_failing:  # once per outage, not every COUNTS_MAX_AGE_S
                log.warning("Job store unavailable for figures: %s", exc)
            self._counts_failing = True
        return self.counts

    async def _counts_loop(self) -> None:
        while True:
            await self.refresh_counts()
            await asyncio.sleep(COUNTS_MAX_AGE_S)

    # --- retention --------------------------------------------------------------------------------
    async def sweep(self, now: Optional[float] = None) -> int:
        """Delete ended jobs older than --jobs-retention-days, files first (a record without files is
        harmless; files without a record would never be found again). Returns how many."""
        days = self.settings.jobs_retention_days
        if days <= 0:
            return 0
        cutoff = (now if now is not None else time.time()) - days * 86400
        removed = 0
        for job in await self.store.expired(cutoff):
            await asyncio.to_thread(delete_job_files, self.settings.jobs_dir, job.id)
            await self.store.delete(job.id)
            removed += 1
        if removed:
            log.info("Retention: deleted %d job(s) that ended over %g day(s) ago", removed, days)
        return removed

    async def _retention_loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except JobStoreUnavailable as exc:
                log.warning("Retention sweep skipped: %s", exc)
            except Exception:
                log.exception("Retention sweep failed")
            await asyncio.sleep(RETENTION_EVERY_S)
