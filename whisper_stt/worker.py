"""``whisper_server.py --worker``: a process that only transcribes jobs.

It loads the model and runs the job runner against the job store (Redis at ``--state-url``, so workers on
any machine share one queue; or the SQLite store in ``--jobs-dir``, for workers on the HTTP replica's own
machine). It opens no port and needs no keys: clients submit through the HTTP replicas, which can run with
``--job-workers 0`` to keep their model for real-time streams. Uploads and checkpoints are read from
``--jobs-dir``, which therefore must be the same directory (a shared volume) for every replica and worker.

SIGTERM or Ctrl-C stops it cleanly: it stops claiming, hands a running job back to the queue (the next
worker resumes it from its checkpoints) and exits 0. A second signal exits at once; the job then returns
to the queue when its lease lapses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from .config import Settings

log = logging.getLogger("whisper_stt")


def run_worker(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM. Returns the process exit code."""
    from .engine import Engine
    from .models import ModelError
    from .serve import configure_logging, leave

    configure_logging(settings.log_level)
    if settings.job_workers < 1:
        log.error("--worker needs --job-workers 1 or more (jobs this worker transcribes at once).")
        return 1
    if not settings.state_url:
        log.info("Jobs come from the SQLite store in %s: only processes on this machine can share it; "
                 "use --state-url redis://... for workers on other machines.", settings.jobs_dir)
    try:
        # The store first: an unreachable Redis is one clear line now, not after loading a model.
        if not asyncio.run(_store_reachable(settings)):
            return 1
        engine = Engine.load(settings, streams=False)  # jobs only: no stream lane model copy
    except ModelError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    try:
        code = asyncio.run(_work(settings, engine))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        code = 130
    finally:
        engine.close()
        log.info("Worker stopped.")
    # A job's piece still decoding was handed back already: exit now instead of at the piece's end
    return leave(engine, code)


async def _store_reachable(settings: Settings) -> bool:
    from .jobs import open_job_store
    from .jobs.base import JobStoreUnavailable

    try:
        store = open_job_store(settings)
    except ValueError as exc:  # e.g. a --state-url that is not redis://, rediss:// or unix://
        log.error("Cannot open the job store: %s", exc)
        return False
    try:
        await store.counts()
        return True
    except JobStoreUnavailable as exc:
        log.error("Worker not started: %s", exc)
        return False
    finally:
        await store.close()


async def _work(settings: Settings, engine) -> int:
    from .jobs import open_job_store
    from .jobs.service import JobService

    store = open_job_store(settings)
    where = getattr(store, "where", None) or str(getattr(store, "path", settings.jobs_dir))

    state = None
    if settings.state_url:
        # Usage of the keys whose jobs this worker runs is counted where the HTTP replicas count it.
        from .state import open_state

        state = open_state(settings.state_url)
        await state.start()

    service = JobService(store, engine, settings, state=state)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        if received:  # a second Ctrl-C: do not wait for the job to be handed back
            log.info("Received %s again: exiting now; the running job returns to the queue when its lease "
                     "lapses", sig.name)
            os._exit(130)
        received.append(sig)
        stop_requested.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await service.start()
        log.info("Worker %s: taking up to %d job(s) at once from %s; uploads in %s",
                 service.runner.worker_id, service.runner.slots, where, settings.jobs_dir)
        await stop_requested.wait()
        log.info("Received %s: no new jobs; a running job goes back to the queue", received[0].name)
        await service.stop()  # the runner hands its jobs back, then the store is closed
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if state is not None:
            try:
                await asyncio.wait_for(state.close(), 10)
            except Exception:
                log.warning("Usage of the last jobs could not be written to the state backend")
    return 0

