"""The stream lane: one scheduler that decides which real-time work the model does next.

Sessions submit two kinds of jobs: *finals* (an utterance ended; the client is waiting) and *partials*
(a preview of the open utterance). The scheduler runs them on ``workers`` dedicated model worker threads
(two on a CPU: one call at a time leaves half of a 2-core box idle while it is in its serial parts, see
issue 15's profile), in batches, by these rules:

* Finals before partials, oldest first. A final never waits behind more than one running batch.
* **Refreshes pause while the lane is behind on finals**: when a final had to wait ``RIDE_SLACK_S`` or
  more before a worker took it, no refresh batch starts for ``REFRESH_HOLDOFF_S`` (each late final
  extends it). Past capacity the workers then serve only finals and first previews, instead of one of
  them re-decoding open utterances that are on screen already; refreshes resume once finals are taken
  on time.
* **A final never waits behind a refresh**: with two or more workers, batches of partials may occupy at
  most ``workers - 1`` of them; the last free worker takes only finals and first previews (below: short
  clips, so a final waits at most one such small batch). Past capacity this is what slows previews first:
  refreshes then share fewer workers, wait longer and are superseded (next rule) more often, while
  finals and new utterances' first words keep a worker. (With one worker a final waits for at most the
  one running batch, as before.)
* A session has at most one *pending* partial: submitting a newer one supersedes the old (its caller
  gets ``None``), so stale previews are never computed. Under overload partial cadence degrades first
  while finals stay on time, and nothing the client said is lost (finals carry the whole utterance).
* Partials are taken oldest-first across sessions (a superseded preview keeps its session's place in
  line), so every session gets its turn (fair), except that **an utterance's first preview goes ahead of
  other sessions' refreshes**: when the lane is saturated, refreshes of text already on screen slow down
  first and a new utterance still shows its first words quickly. The scheduler tells a first preview by
  its session's history (no protocol change): the session's first preview, the first after one of its
  finals, or one no longer than its previous preview (an open utterance only grows, so a new one began);
  a first preview superseded before it ran passes that on.
* Several jobs of the same kind run as one batch: one encoder call over the stacked mel inputs and one
  ``generate`` call per padding bucket, which is where a GPU gains most and still pays on a CPU for beam
  search. A clip is padded to a bucket of its own length and shares a call only with clips of that
  bucket, so a session's words never depend on which other sessions were in the batch.
* **First previews ride ahead of finals that have time to spare**: a worker that takes a batch of finals
  whose oldest has waited under ``RIDE_SLACK_S`` first runs the waiting first previews (up to half a
  batch; short clips, one small ``generate``), so a new utterance's first words do not wait for the lane
  to run out of finals. A final's speculative head start (the session asks for it half the silence
  threshold early) covers the small delay. Once finals wait longer than that the lane is behind: finals
  go first and first previews wait (past capacity previews slow down first, finals stay on time).
* **A batch of finals is one padding bucket** (when the lane is given ``group_of``): the oldest final and
  the waiting finals of its bucket, up to ``max_batch``. Finals of other buckets stay in line for the
  next free worker instead of waiting, inside one batch, behind ``generate`` calls that cannot include
  them; the decoder's cost per step hardly grows with the rows of one call (on a CPU it is bound by
  reading the weights), so a bucket's finals together cost little more than one.
* Finals are verified (``Engine._batch_blocking``): one whose fast decode may have lost speech is decoded
  again carefully on this lane before its caller gets it.

File and REST work does not come through here: it runs on the engine's own pool, so a long upload never
blocks a final and streams never starve uploads (on a CPU the two lanes share the cores).

Everything is thread-based (a condition variable and ``concurrent.futures``), so sessions on any event
loop can submit: ``await asyncio.wrap_future(...)``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional

import numpy as np

log = logging.getLogger(__name__)

# A final that has waited less than this still has time to spare (the session asks for it half the
# silence threshold early): first previews may run just before it.
RIDE_SLACK_S = 0.25
# When a final had to wait longer than that, the lane is behind: no refresh batch starts for this long
# (every worker serves finals and first previews), and each late final extends the pause.
REFRESH_HOLDOFF_S = 1.0

BatchFn = Callable[[list[tuple[np.ndarray, Optional[str]]], int], list]


@dataclass
class _Job:
    kind: str  # "final" | "partial"
    key: Hashable
    audio: np.ndarray
    language: Optional[str]
    beam_size: int
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.monotonic)
    seq: int = 0
    first: bool = False  # a partial: the first preview of its utterance
    group: Hashable = None  # a final: its padding bucket (``group_of``), worked out once at submission


class StreamScheduler:
    """Priority + batching scheduler for real-time work, running ``batch_fn`` on its own thread.

    Args:
        batch_fn: blocking ``fn([(audio, language), ...], beam_size) -> [TranscriptionResult, ...]``; with
            several workers it is called from several threads at once.
        max_batch: most jobs in one batch.
        workers: model worker threads (batches run at once).
        group_of: a clip's padding bucket (``audio -> key``); a batch of finals then holds one bucket.
    """

    def __init__(self, batch_fn: BatchFn, *, max_batch: int = 8, workers: int = 1,
                 group_of: Optional[Callable[[np.ndarray], Hashable]] = None) -> None:
        self._batch_fn = batch_fn
        self._group_of = group_of
        self.max_batch = max_batch
        self.workers = max(1, int(workers))
        self._cond = threading.Condition()
        self._finals: deque[_Job] = deque()
        self._partials: dict[Hashable, _Job] = {}  # insertion order = submission order
        self._preview_len: dict[Hashable, int] = {}  # samples in each session's latest preview request
        self._seq = itertools.count()
        self._closed = False
        self._behind_until = 0.0  # monotonic time until which refreshes pause (behind on finals)
        # figures for /stats and /health
        self.running = 0  # jobs in running batches, all workers
        self._partial_batches = 0  # workers now running a partial batch
        self.batches = 0
        self.jobs_done = {"final": 0, "partial": 0}
        self.superseded = 0
        self.busy_seconds = 0.0  # worker-seconds: with several workers it can pass wall time
        self.audio_seconds = 0.0
        self.last_wait = {"final": 0.0, "partial": 0.0}  # queue wait of the latest job started
        self._threads = [
            threading.Thread(target=self._loop, name="stream-lane" if self.workers == 1 else f"stream-lane-{k}",
                             daemon=True)
            for k in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    # --- submitting (any thread / loop) ---------------------------------------------------------
    async def final(self, key: Hashable, audio: np.ndarray, language: Optional[str], beam_size: int):
        job = _Job("final", key, audio, language, beam_size, seq=next(self._seq),
                   group=self._group_of(audio) if self._group_of is not None else None)
        with self._cond:
            self._check_open()
            self._drop_partial(key)  # the final covers everything a pending preview would
            self._preview_len.pop(key, None)  # the utterance ended: the session's next preview is a first
            self._finals.append(job)
            self._cond.notify()
        return await self._wait(job)

    async def partial(self, key: Hashable, audio: np.ndarray, language: Optional[str]):
        """The newest preview of ``key``'s open utterance; ``None`` if a newer one replaced it."""
        job = _Job("partial", key, audio, language, 1, seq=next(self._seq))
        with self._cond:
            self._check_open()
            last = self._preview_len.get(key)
            self._preview_len[key] = len(audio)
            old = self._partials.get(key)
            job.first = last is None or len(audio) <= last or (old is not None and old.first)
            if old is not None and old.future.set_running_or_notify_cancel():
                old.future.set_result(None)
                self.superseded += 1
            # Assigning to an existing key keeps its place: a session whose previews keep being replaced
            # still moves up the line instead of going to the back each time (fair under overload).
            self._partials[key] = job
            self._cond.notify()
        return await self._wait(job)

    def forget(self, key: Hashable) -> None:
        """A session went away: its pending jobs are dropped (a running batch just finishes)."""
        with self._cond:
            self._drop_partial(key)
            self._preview_len.pop(key, None)
            kept = deque()
            for job in self._finals:
                if job.key == key:
                    job.future.cancel()
                else:
                    kept.append(job)
            self._finals = kept

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for job in list(self._finals) + list(self._partials.values()):
                job.future.cancel()
            self._finals.clear()
            self._partials.clear()
            self._preview_len.clear()
            self._cond.notify_all()

    # --- figures ----------------------------------------------------------------------------------
    @property
    def pending_finals(self) -> int:
        return len(self._finals)

    @property
    def pending_partials(self) -> int:
        return len(self._partials)

    def oldest_wait(self) -> float:
        """Seconds the oldest pending job has waited (0 when idle): the lane's lag."""
        with self._cond:
            jobs = list(self._finals)[:1] + list(self._partials.values())[:1]
        now = time.monotonic()
        return round(max((now - j.submitted for j in jobs), default=0.0), 3)

    def snapshot(self) -> dict:
        return {
            "pending_finals": self.pending_finals,
            "pending_partials": self.pending_partials,
            "running": self.running,
            "workers": self.workers,
            "oldest_wait_s": self.oldest_wait(),
            "batches": self.batches,
            "finals_done": self.jobs_done["final"],
            "partials_done": self.jobs_done["partial"],
            "partials_superseded": self.superseded,
            "last_final_wait_s": round(self.last_wait["final"], 3),
            "last_partial_wait_s": round(self.last_wait["partial"], 3),
            "busy_seconds": round(self.busy_seconds, 2),
            "real_time_factor": round(self.busy_seconds / self.audio_seconds, 4) if self.audio_seconds else None,
        }

    # --- internals --------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the engine is shut down")

    def _drop_partial(self, key: Hashable) -> None:
        old = self._partials.pop(key, None)
        if old is not None and old.future.set_running_or_notify_cancel():
            old.future.set_result(None)
            self.superseded += 1

    @staticmethod
    async def _wait(job: _Job):
        try:
            return await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            job.future.cancel()  # still pending: the lane skips it
            raise

    def _partials_allowed(self) -> bool:
        """May a free worker start a refresh batch now? Not when it would leave no worker for a final,
        nor while the lane is behind on finals (see ``REFRESH_HOLDOFF_S``)."""
        if time.monotonic() < self._behind_until:
            return False
        return self.workers == 1 or self._partial_batches < self.workers - 1

    def _has_work(self) -> bool:
        if self._finals:
            return True
        if not self._partials:
            return False
        return self._partials_allowed() or any(job.first for job in self._partials.values())

    def _take_plan(self) -> list[list[_Job]]:
        """What a free worker runs next, in order: a batch of finals with the waiting first previews
        (up to half a batch) riding ahead of it, else :meth:`_take`'s partials."""
        if not self._finals:
            return [self._take()]
        finals = self._take_finals()
        now = time.monotonic()
        if now - finals[0].submitted >= RIDE_SLACK_S:
            self._behind_until = now + REFRESH_HOLDOFF_S  # behind on finals: refreshes pause
            return [finals]
        firsts = [k for k, job in self._partials.items() if job.first][: max(1, self.max_batch // 2)]
        return [[self._partials.pop(k) for k in firsts], finals] if firsts else [finals]

    def _take(self) -> list[_Job]:
        """Next batch: finals first (oldest first), else the oldest pending partials (if allowed)."""
        if self._finals:
            return self._take_finals()
        firsts = [k for k, job in self._partials.items() if job.first]
        refreshes = [k for k, job in self._partials.items() if not job.first] if self._partials_allowed() else []
        return [self._partials.pop(k) for k in (firsts + refreshes)[: self.max_batch]]

    def _take_finals(self) -> list[_Job]:
        """The oldest final and the waiting finals that can share its calls (same beam; same bucket when
        ``group_of`` is set), oldest first, up to ``max_batch``; the others keep their place in line."""
        head = self._finals[0]
        batch, rest = [], deque()
        for job in self._finals:
            if len(batch) < self.max_batch and (job.beam_size, job.group) == (head.beam_size, head.group):
                batch.append(job)
            else:
                rest.append(job)
        self._finals = rest
        return batch

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._has_work():
                    # a refresh held by the pause may start when it ends, with no new submission to wake us
                    pause = self._behind_until - time.monotonic()
                    self._cond.wait(max(0.01, pause) if self._partials and pause > 0 else None)
                if self._closed:
                    return
                plan = []
                for batch in self._take_plan():
                    batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
                    if batch:
                        plan.append(batch)
                        self.running += len(batch)
                # a partial batch on its own counts against the refresh rule; first previews riding
                # ahead of a final batch do not (the worker is a final's anyway)
                alone = len(plan) == 1 and plan[0][0].kind == "partial"
                if alone:
                    self._partial_batches += 1
            try:
                for batch in plan:
                    self._run_batch(batch)
            finally:
                if alone:
                    with self._cond:
                        self._partial_batches -= 1
                        self._cond.notify_all()  # a worker held back by the partial rule may go on

    def _run_batch(self, batch: list[_Job]) -> None:
        kind = batch[0].kind
        started = time.monotonic()
        for job in batch:
            self.last_wait[job.kind] = started - job.submitted
        results, error = None, None
        try:
            results = self._batch_fn([(j.audio, j.language) for j in batch], batch[0].beam_size)
        except BaseException as exc:  # a model failure goes to every caller, the lane lives on
            log.exception("stream batch failed")
            error = exc
        # the figures first, so a caller that has its result sees them counted (several workers update them)
        with self._cond:
            if results is not None:
                self.jobs_done[kind] += len(batch)
                self.audio_seconds += sum(len(job.audio) for job in batch) / 16000
            self.busy_seconds += time.monotonic() - started
            self.batches += 1
            self.running -= len(batch)
        for k, job in enumerate(batch):
            if results is not None:
                job.future.set_result(results[k])
            else:
                job.future.set_exception(error)
