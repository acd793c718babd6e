"""JobRunner: takes jobs from a store and transcribes them, resumably, on the engine's file path.

A job's audio is cut at silences into pieces of roughly ``PIECE_MIN_S``-``PIECE_MAX_S`` seconds. Each piece
goes through :meth:`Engine.transcribe` (the file pool, never the real-time stream lane, so streams keep
their priority) and is written as a checkpoint in the job's directory the moment it is done. A worker
killed with -9 loses at most the piece it was on: the next claim (here after a restart, or another worker
sharing the jobs directory) reads the plan and the finished pieces and goes on from there. The cut plan is
a checkpoint too, so a resumed job is cut exactly as before and its text is the same.

While a job runs, a heartbeat renews its lease every ``HEARTBEAT_S`` with the progress (audio seconds done /
total). When the heartbeat is refused (the job was cancelled, or its lease lapsed and another worker took
it) the transcription is abandoned and nothing is written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable, Optional

from ..audio import SAMPLE_RATE, AudioDecodeError, AudioTooLong, decode_file, format_duration
from ..engine import Segment, TranscriptionResult, UnsupportedLanguageError
from .base import HEARTBEAT_S, LEASE_S, Job, JobStatus, JobStoreUnavailable
from .files import job_dir, upload_path
from .render import result_from_dict

if TYPE_CHECKING:
    from ..config import Settings
    from ..engine import Engine
    from .base import JobStore

log = logging.getLogger(__name__)

PIECE_TARGET_S = 60.0  # pieces are cut at the longest silence near this length ...
PIECE_MIN_S = 30.0  # ... and not shorter than this (but the last one) ...
PIECE_MAX_S = 120.0  # ... nor longer, unless there is no silence to cut at
IDLE_POLL_S = 1.0  # an idle runner looks for work this often (a local submit wakes it at once)
STALE_SCAN_S = 5.0  # how often lapsed leases are put back in the queue
MAX_ATTEMPTS = 10  # claims of one job (crashes, clean stops); past this it fails: it keeps killing its workers
UNSPACED = frozenset({"ja", "zh", "yue", "th", "lo", "my"})  # languages whose texts join without spaces
PLAN_FILE = "plan.json"


def default_worker_id() -> str:
    """"host:pid:random": unique per process, and lets a store on the same machine tell that a worker is
    gone without waiting for its lease (see sqlite_store.local_worker_alive)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def default_job_duration_s(settings: "Settings", device: str) -> float:
    """--max-job-duration-s, or 0 = auto: 12 h on a GPU, 4 h on a CPU."""
    value = getattr(settings, "max_job_duration_s", 0.0) or 0.0
    if value > 0:
        return value
    return 12 * 3600.0 if device == "cuda" else 4 * 3600.0


QUIET_FRAME_S = 0.05
QUIET_MIN_S = 0.3  # a pause at least this long is a place to cut


def quiet_spans(audio) -> list[tuple[float, float]]:
    """Where the recording is loud enough to be speech, as (start, end) seconds: the complement of its
    pauses (runs of at least ``QUIET_MIN_S`` of frames well below the recording's own speech level).

    Only used to choose where to cut pieces, so it is deliberately cheap (frame energies in numpy,
    milliseconds for an hour) rather than Silero over the whole file, which costs about as much as the
    VAD the engine runs again inside each piece anyway (several % of a CPU transcription, far more on a
    GPU). The threshold follows the recording: a third of the way from its noise floor (10th percentile
    of frame levels) to its speech level (90th), but at least 30 dB under speech, so stretches of digital
    silence do not hide real pauses with room noise in them. A recording without a 6 dB range (constant
    noise or speech) has no pauses: it is not cut.
    """
    import numpy as np

    frame = int(QUIET_FRAME_S * SAMPLE_RATE)
    n = len(audio) // frame
    if n == 0:
        return [(0.0, len(audio) / SAMPLE_RATE)]
    frames = np.asarray(audio[: n * frame], dtype=np.float32).reshape(n, frame)
    level = 10 * np.log10(np.mean(frames * frames, axis=1) + 1e-12)
    floor, loud = np.percentile(level, 10), np.percentile(level, 90)
    threshold = max(floor + (loud - floor) / 3, loud - 30.0) if loud - floor > 6 else floor - 1
    quiet = level < threshold
    spans: list[tuple[float, float]] = []
    start = None  # start frame of the current loud stretch
    run = 0  # quiet frames in a row
    need = max(1, round(QUIET_MIN_S / QUIET_FRAME_S))
    for i, q in enumerate(quiet):
        if q:
            run += 1
            if start is not None and run == need:  # the loud stretch ended where this pause began
                spans.append((start * QUIET_FRAME_S, (i - need + 1) * QUIET_FRAME_S))
                start = None
        else:
            run = 0
            if start is None:
                start = i
    if start is not None:
        spans.append((start * QUIET_FRAME_S, n * QUIET_FRAME_S))
    return [(round(a, 3), round(b, 3)) for a, b in spans]


def plan_pieces(spans: list[tuple[float, float]], total_s: float, target: float = PIECE_TARGET_S,
                min_s: float = PIECE_MIN_S, max_s: float = PIECE_MAX_S) -> list[tuple[float, float]]:
    """Cut [0, total_s] into pieces at silences (the gaps between speech ``spans``).

    Among the gaps whose middle falls between ``min_s`` and ``max_s`` after the piece's start, the widest
    wins (nearest to ``target`` on a tie): the cut is where nobody speaks. With no gap in range the piece
    runs to the next gap, so no word is ever cut; a tail shorter than ``min_s`` joins the last piece.
    """
    gaps: list[tuple[float, float]] = []  # (middle, width)
    prev_end = None
    for start, end in sorted(spans):
        if prev_end is not None and start > prev_end:
            gaps.append(((prev_end + start) / 2, start - prev_end))
        prev_end = end if prev_end is None else max(prev_end, end)
    pieces: list[tuple[float, float]] = []
    start = 0.0
    while total_s - start > max_s:
        in_range = [g for g in gaps if start + min_s <= g[0] <= start + max_s]
        if in_range:
            cut = max(in_range, key=lambda g: (round(g[1], 2), -abs(g[0] - start - target)))[0]
        else:
            later = [g for g in gaps if g[0] > start + max_s]
            if not later:
                break
            cut = later[0][0]
        if total_s - cut < min_s:
            break
        pieces.append((round(start, 3), round(cut, 3)))
        start = cut
    pieces.append((round(start, 3), round(total_s, 3)))
    return pieces


def merge_results(parts: list[tuple[float, TranscriptionResult]], duration: float,
                  language: str, language_probability: float) -> TranscriptionResult:
    """Pieces' results (each with its offset in seconds) -> one result over the whole audio."""
    segments: list[Segment] = []
    texts: list[str] = []
    processing = 0.0
    for offset, part in parts:
        processing += part.processing_time
        if part.text.strip():
            texts.append(part.text.strip())
        for s in part.segments:
            words = None
            if s.words is not None:
                words = [type(w)(round(w.start + offset, 3), round(w.end + offset, 3), w.word, w.probability)
                         for w in s.words]
            segments.append(Segment(
                start=round(s.start + offset, 3), end=round(s.end + offset, 3), text=s.text,
                confidence=s.confidence, no_speech_prob=s.no_speech_prob, words=words,
                temperature=s.temperature, compression_ratio=s.compression_ratio,
            ))
    joiner = "" if language in UNSPACED else " "
    return TranscriptionResult(
        text=joiner.join(texts), language=language, language_probability=language_probability,
        duration=duration, segments=segments, processing_time=round(processing, 3),
    )


class JobLost(Exception):
    """The worker no longer holds the job (cancelled, or taken over): stop and write nothing."""


@dataclass
class _Checkpoints:
    """The job's directory: plan.json, then piece-NNNN.json per finished piece (atomic renames)."""

    folder: Path

    def _write(self, name: str, data: dict) -> None:
        tmp = self.folder / f".{name}.{uuid.uuid4().hex[:6]}.tmp"
        with tmp.open("w", encoding="utf-8") as out:
            json.dump(data, out, ensure_ascii=False)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.folder / name)

    def _read(self, name: str) -> Optional[dict]:
        try:
            return json.loads((self.folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # missing, or torn by a crash mid-write: the piece is simply done again

    def plan(self) -> Optional[dict]:
        return self._read(PLAN_FILE)

    def save_plan(self, plan: dict) -> None:
        self._write(PLAN_FILE, plan)

    def piece(self, index: int) -> Optional[dict]:
        return self._read(f"piece-{index:04d}.json")

    def save_piece(self, index: int, data: dict) -> None:
        self._write(f"piece-{index:04d}.json", data)


class JobRunner:
    """Runs up to ``settings.job_workers`` jobs at once from ``store`` on ``engine``.

    ``on_end(job)`` (optional, async) is called once a job's end has been written by this runner, e.g. to
    count its audio against the key's usage; the job's webhook (if any) is sent in the background.
    """

    def __init__(self, store: "JobStore", engine: "Engine", settings: "Settings",
                 worker_id: Optional[str] = None,
                 on_end: Optional[Callable[[Job], Awaitable[None]]] = None) -> None:
        self.store = store
        self.engine = engine
        self.settings = settings
        self.worker_id = worker_id or default_worker_id()
        self.on_end = on_end
        self.slots = max(0, int(getattr(settings, "job_workers", 1)))
        self.jobs_dir = Path(getattr(settings, "jobs_dir", "./jobs"))
        self.max_duration_s = default_job_duration_s(settings, engine.device)
        # Renew three times per lease, so one late heartbeat never loses a live job (short leases in tests).
        self.heartbeat_s = min(HEARTBEAT_S, float(getattr(store, "lease_s", LEASE_S)) / 3)
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._wake: Optional[asyncio.Event] = None
        self._stopping = False
        self._claim_trouble: Optional[str] = None  # the last claim failure logged (None: claims work)
        self.running: dict[str, Job] = {}  # job id -> job, while this runner works on it
        # Job ids whose webhook this process is delivering (or waiting to retry): the periodic sweep must
        # not start a second delivery of the same job here, since the store sees one holder (this worker).
        self.delivering: set[str] = set()
        self.pieces_done = 0  # pieces transcribed by this runner (resumed pieces not counted)
        self.pieces_resumed = 0  # pieces read back from checkpoints

    # --- life cycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._tasks or self.slots == 0:
            return
        self._stopping = False
        self._wake = asyncio.Event()
        self._tasks = [asyncio.create_task(self._loop(i), name=f"job-runner-{i}") for i in range(self.slots)]
        log.info("Job runner %s: %d job(s) at once", self.worker_id, self.slots)

    def wake(self) -> None:
        """A job was just submitted in this process: look now instead of at the next poll."""
        if self._wake is not None:
            self._wake.set()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking jobs; running ones are handed back to the queue (their checkpoints stay, so the
        next claim resumes them)."""
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._background:
            await asyncio.wait(list(self._background), timeout=grace)
        # Deliveries still waiting to retry are durable: the store keeps them pending and another process
        # (or this one after a restart) takes them over when they fall due.
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # --- the loop ------------------------------------------------------------------------------
    async def _loop(self, slot: int) -> None:
        last_scan = 0.0
        while not self._stopping:
            try:
                if slot == 0 and time.monotonic() - last_scan >= STALE_SCAN_S:
                    last_scan = time.monotonic()
                    moved = await self.store.requeue_stale()
                    if moved:
                        log.info("Put %d job(s) with a lapsed lease back in the queue", moved)
                job = await self.store.claim(self.worker_id)
            except asyncio.CancelledError:
                raise
            except JobStoreUnavailable as exc:
                self._claim_failed(f"Job store unavailable: {exc}")
                job = None
            except Exception:
                self._claim_failed("Claiming a job failed", exc_info=True)
                job = None
            else:
                if self._claim_trouble is not None:
                    log.info("Job store answers again: taking jobs")
                    self._claim_trouble = None
            if job is None:
                await self._idle()
                continue
            await self._run_claimed(job)

    def _claim_failed(self, message: str, exc_info: bool = False) -> None:
        """Log a failing claim once, not at every poll of every slot while the trouble lasts."""
        if message != self._claim_trouble:
            log.warning("%s (retrying every %.0f s)", message, IDLE_POLL_S, exc_info=exc_info)
            self._claim_trouble = message
        else:
            log.debug("%s", message)

    async def _idle(self) -> None:
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    async def _run_claimed(self, job: Job) -> None:
        if job.attempts > MAX_ATTEMPTS:
            # Every earlier worker died on this job (e.g. killed for memory while decoding it): one job must
            # not take workers down forever.
            await self._end(job, JobStatus.FAILED, error=f"The job was given up after {MAX_ATTEMPTS} attempts "
                            "that each ended with the worker gone.")
            return
        self.running[job.id] = job
        state = {"progress": job.progress, "duration": job.duration}
        work = asyncio.create_task(self._transcribe(job, state), name=f"job-{job.id}")
        beat = asyncio.create_task(self._heartbeat(job, state, work), name=f"job-heartbeat-{job.id}")
        try:
            result = await work
        except asyncio.CancelledError:
            if self._stopping:  # a clean stop: hand the job back now rather than after its lease
                await self._release(job)
                raise
            if beat.done() and not beat.cancelled() and beat.result() is False:
                log.info("Job %s stopped: cancelled or taken over by another worker", job.id)
                return
            raise
        except JobLost:
            log.info("Job %s stopped: cancelled or taken over by another worker", job.id)
            return
        except AudioTooLong:
            await self._end(job, JobStatus.FAILED, error=(
                f"The audio is longer than this server accepts per job ({format_duration(self.max_duration_s)}). "
                "Split it, or ask the operator to raise --max-job-duration-s."))
            return
        except (AudioDecodeError, UnsupportedLanguageError) as exc:
            await self._end(job, JobStatus.FAILED, error=str(exc))
            return
        except Exception:
            log.exception("Job %s failed", job.id)
            await self._end(job, JobStatus.FAILED, error="Transcription failed on the server.")
            return
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
            self.running.pop(job.id, None)
        await self._end(job, JobStatus.SUCCEEDED, result=result.to_dict())

    async def _release(self, job: Job) -> None:
        release = getattr(self.store, "release", None)
        if release is None:
            return
        try:
            await asyncio.shield(release(job.id, self.worker_id))
        except Exception:
            log.warning("Could not hand job %s back; it returns to the queue when its lease lapses", job.id)

    async def _heartbeat(self, job: Job, state: dict, work: asyncio.Task) -> bool:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                held = await self.store.heartbeat(job.id, self.worker_id, progress=state["progress"],
                                                  duration=state["duration"])
            except JobStoreUnavailable as exc:
                log.warning("Heartbeat for job %s failed: %s", job.id, exc)
                continue  # the lease may still hold; a lapse shows at the next successful heartbeat
            if not held:
                work.cancel()
                return False

    async def _report(self, job: Job, state: dict) -> None:
        """Record progress now (after a piece) rather than at the next heartbeat."""
        held = await self.store.heartbeat(job.id, self.worker_id, progress=state["progress"],
                                          duration=state["duration"])
        if not held:
            raise JobLost()

    async def _end(self, job: Job, status: JobStatus, result: Optional[dict] = None,
                   error: Optional[str] = None) -> None:
        try:
            written = await self.store.finish(job.id, self.worker_id, status, result=result, error=error)
        except JobStoreUnavailable as exc:
            log.warning("Could not record the end of job %s (%s); it will run again", job.id, exc)
            return
        if not written:
            log.info("Job %s ended elsewhere (cancelled or taken over); this result is dropped", job.id)
            return
        try:
            ended = await self.store.get(job.id)
        except JobStoreUnavailable:
            ended = None
        # The one line per job that an operator of many workers reads: how it ended, which attempt, how much.
        audio = f", {ended.duration:.1f} s of audio" if ended is not None and ended.duration else ""
        log.info("Job %s %s (attempt %d%s)%s", job.id, status.value, job.attempts, audio,
                 f": {error}" if error else "")
        if ended is None:
            return
        if self.on_end is not None:
            try:
                await self.on_end(ended)
            except Exception:
                log.exception("After-job hook failed for %s", job.id)
        if ended.webhook_url:
            self.deliver(ended)  # this worker holds the delivery from its finish on: no wait for a sweep

    def deliver(self, job: Job) -> Optional[asyncio.Task]:
        """Deliver ``job``'s pending webhook in the background, unless this process already is."""
        if job.id in self.delivering:
            return None
        self.delivering.add(job.id)
        task = asyncio.create_task(self._deliver(job), name=f"job-webhook-{job.id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _deliver(self, job: Job) -> None:
        try:
            from .webhook import deliver_job_webhook

            await deliver_job_webhook(self.store, job, self.settings, worker=self.worker_id)
        except asyncio.CancelledError:
            raise  # stopping: the delivery stays pending in the store and is taken over after its lease
        except JobStoreUnavailable as exc:
            log.warning("Webhook delivery for job %s paused: %s (the sweep tries again)", job.id, exc)
        except Exception:
            log.exception("Webhook delivery for job %s failed", job.id)
        finally:
            self.delivering.discard(job.id)

    # --- one job ---------------------------------------------------------------------------------
    async def _transcribe(self, job: Job, state: dict) -> TranscriptionResult:
        path = upload_path(self.jobs_dir, job.upload)
        language = self.engine.normalize_language(job.language)
        audio = await asyncio.to_thread(decode_file, str(path), self.max_duration_s)
        if len(audio) == 0:
            raise AudioDecodeError("The file decoded to no audio samples.")
        total = round(len(audio) / SAMPLE_RATE, 3)
        state["duration"] = total
        ckpt = _Checkpoints(job_dir(self.jobs_dir, job.id))
        plan = await asyncio.to_thread(ckpt.plan)  # a file read, like the checkpoint work below
        if plan is None or plan.get("duration") != total:
            # Where to cut: pauses found by frame energy (see quiet_spans), off the event loop.
            spans = await asyncio.to_thread(quiet_spans, audio)
            plan = {"duration": total, "pieces": plan_pieces(spans, total)}
            await asyncio.to_thread(ckpt.save_plan, plan)
        pieces = [tuple(p) for p in plan["pieces"]]
        options = {"word_timestamps": True} if job.word_timestamps else {}
        parts: list[tuple[float, TranscriptionResult]] = []
        detected: Optional[tuple[str, float]] = None
        saved_pieces = await asyncio.to_thread(lambda: [ckpt.piece(i) for i in range(len(pieces))])
        resumable = [s is not None and s.get("start") == p[0] and s.get("end") == p[1]
                     for s, p in zip(saved_pieces, pieces)]
        if any(resumable):
            log.info("Job %s resumed: %d of %d pieces from checkpoints", job.id, sum(resumable), len(pieces))
        for index, (start, end) in enumerate(pieces):
            saved = saved_pieces[index] if resumable[index] else None
            if saved is not None:
                part = result_from_dict(saved["result"])
                self.pieces_resumed += 1
            else:
                clip = audio[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)]
                # Auto-detect once, on the first piece: a one-language recording keeps it throughout, and a
                # quiet piece cannot switch the language mid-job.
                lang = language or (detected[0] if detected else None)
                part = await self.engine.transcribe(clip, lang, **options)
                try:
                    await asyncio.to_thread(ckpt.save_piece, index, {"start": start, "end": end,
                                                                     "result": part.to_dict()})
                except FileNotFoundError:  # the job's files were deleted: it was cancelled
                    raise JobLost() from None
                self.pieces_done += 1
            if detected is None:
                detected = (language or part.language, part.language_probability if not language else 1.0)
            parts.append((start, part))
            state["progress"] = min(1.0, end / total) if total else 1.0
            await self._report(job, state)
        lang, prob = detected or (language or "", 0.0)
        return merge_results(parts, total, lang, prob)
