"""The engine's thread pools, the model-call limit and the counters /health, /stats and /metrics read.

File and REST model calls run on a pool of exactly ``max_concurrent`` threads, so the pool is the limit:
a call submitted while every thread is busy waits in the pool's queue (``queued``). Audio decoding and
streaming VAD have their own small pools so neither ever waits behind a long model call.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional, TypeVar

from .results import TranscriptionResult

T = TypeVar("T")


class ModelPool:
    """The model-call pool with its counters, plus the decode and VAD helper pools."""

    def __init__(self, max_concurrent: int) -> None:
        self.max_concurrent = max_concurrent
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="whisper")
        # Decoding is separate so a long decode never holds a model slot, and streaming VAD has its own
        # thread so endpointing never waits behind a long file decode.
        self._decode_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")
        self._vad_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad")
        self._counts = threading.Lock()  # the counters below are updated from worker threads too
        self.active = 0
        self.queued = 0
        self.completed = 0
        self.audio_seconds = 0.0
        self.processing_seconds = 0.0
        self.fallbacks: dict[str, int] = {}  # careful re-decodes by reason (see careful.fallback_reason)
        # Runs each model call (``around(work)``); with a model per GPU it picks the model (lanes.py).
        self.around: Optional[Callable[[Callable[[], T]], T]] = None

    async def run_decode(self, fn: Callable[..., T], *args) -> T:
        """Run blocking audio decoding off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._decode_pool, fn, *args)

    async def run_vad(self, fn: Callable[..., T], *args) -> T:
        """Run a (short) voice-activity computation off the event loop on its own thread."""
        return await asyncio.get_running_loop().run_in_executor(self._vad_pool, fn, *args)

    def count_fallback(self, reason: str) -> None:
        with self._counts:
            self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1

    def submit(self, work: Callable[[], T]) -> "Future[T]":
        """Queue one model call on the pool (it waits there while every thread is busy)."""

        def job() -> T:
            with self._counts:
                self.queued -= 1
                self.active += 1
            try:
                return work() if self.around is None else self.around(work)
            finally:
                with self._counts:
                    self.active -= 1

        with self._counts:
            self.queued += 1
        return self._pool.submit(job)

    def withdraw(self, future: Future) -> None:
        """The caller went away: drop the call if it has not started (a running call cannot be
        interrupted; its result is discarded). A cancelled future's job never runs."""
        with self._counts:
            if future.cancel():
                self.queued -= 1

    def record(self, result: TranscriptionResult) -> None:
        self.completed += 1
        self.audio_seconds += result.duration
        self.processing_seconds += result.processing_time

    async def run(self, work: Callable[[], TranscriptionResult]) -> TranscriptionResult:
        """One model call on the pool, awaited; counted when it completes, withdrawn when cancelled."""
        future = self.submit(work)
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            self.withdraw(future)
            raise
        self.record(result)
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._vad_pool.shutdown(wait=False, cancel_futures=True)
