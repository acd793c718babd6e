"""The :class:`Engine` facade: the one shared Whisper model, its limits and its public calls.

All model calls go through the engine: it bounds how many run at once, runs them on its own thread pool
(off the event loop) and consumes faster-whisper's lazy segment generator inside the worker thread, so the
event loop never does inference work. The work itself lives by concern in this package: the short-window
batch decoder (short_window.py), the careful fallback (careful.py), faster-whisper's own decoding
(native.py), file chunking (chunked.py, spans.py), pools and counters (pools.py), device choice (device.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import AsyncIterator, Callable, Iterator, Optional, Sequence, TypeVar

import numpy as np

from ..config import Settings
from ..models import ResolvedModel, resolve_model
from ..scheduler import StreamScheduler
from ..untrusted import echo
from . import careful, chunked, native, short_window
from .device import choose_device, default_stream_workers, stream_threads
from .lanes import StreamLanes, cuda_device_count, least_loaded, load_replicas, plan_lanes
from .pools import ModelPool
from .results import DecodeFlags, TranscriptionResult, UnsupportedLanguageError
from .window import SHORT_PAD_S

log = logging.getLogger(__name__)
T = TypeVar("T")

AUTO_LANGUAGE = ("", "auto", None)


def model_languages(model) -> frozenset[str]:
    """The languages the loaded model has a token for. faster-whisper lists ``yue`` for every multilingual
    model, but only large-v3 knows it: on the others the decoder gets an unknown token, loops and costs ~40x
    the CPU of a real language, so such a code is refused like any unknown one."""
    tokenizer = getattr(model, "hf_tokenizer", None)
    languages = list(model.supported_languages)
    if tokenizer is None:
        return frozenset(languages)
    return frozenset(code for code in languages if tokenizer.token_to_id(f"<|{code}|>") is not None)


class Engine:
    """Owns the WhisperModel, its worker threads and the concurrency limit."""

    def __init__(
        self,
        model,
        *,
        model_name: str,
        device: str,
        compute_type: str,
        max_concurrent: int,
        beam_size: int = 5,
        vad_filter: bool = True,
        max_stream_batch: int = 8,
        file_batch_size: int = 8,
        stream_workers: int = 1,
        stream_model=None,
        stream_threads: int = 0,
    ) -> None:
        self.model = model
        self.model_name = model_name
        self.device = device
        self.compute_type = compute_type
        self.beam_size = beam_size
        self.vad_filter = vad_filter
        self.file_batch_size = file_batch_size  # 0: files go through faster-whisper's sequential decoding
        self.pool = ModelPool(max_concurrent)
        self.device_indexes: tuple[int, ...] = (0,)  # the GPUs of the lanes, one model each (spread_over)
        self.supported_languages = model_languages(model)
        # Real-time work (finals, partials) has its own lane and model workers: see scheduler.py.
        # ``stream_model``: a copy of the model with fewer threads per call for the lane (see stream_threads).
        self.stream_model = stream_model
        self.stream_threads = stream_threads  # threads per lane call on its own model copy; 0: shares the model
        lane_fn = self._batch_blocking if stream_model is None else self._on_model(stream_model,
                                                                                  self._batch_blocking)
        self.streams = StreamScheduler(lane_fn, max_batch=max_stream_batch, workers=stream_workers,
                                       group_of=short_window.clip_bucket)  # one bucket per batch of finals

    @classmethod
    def load(cls, settings: Settings, *, streams: bool = True) -> "Engine":
        """Resolve, load and return the engine described by ``settings`` (blocking, seconds).
        ``streams=False`` (a job worker): no real-time lane work, so no lane model copy either."""
        from faster_whisper import WhisperModel

        resolved: ResolvedModel = resolve_model(settings.model, settings.models_dir)
        choice = choose_device(settings.device, settings.compute_type)
        plan = plan_lanes(choice, settings.device_index, settings.max_concurrent_transcriptions,
                          cuda_device_count() if choice.device == "cuda" else 0)
        if plan.note:
            log.warning(plan.note)
        workers = plan.max_concurrent
        lanes = settings.stream_workers or default_stream_workers(choice.device)
        lane_threads = (stream_threads(choice.device, settings.cpu_threads, settings.stream_cpu_threads, lanes)
                        if streams else 0)
        started = time.perf_counter()
        model = WhisperModel(
            str(resolved.path),
            device=choice.device,
            device_index=plan.device_indexes[0],
            compute_type=choice.compute_type,
            cpu_threads=settings.cpu_threads,
            # + the stream lane's workers (each call needs a free one) unless the lane has its own copy
            num_workers=workers + (0 if lane_threads else lanes),
        )
        stream_model = None
        if lane_threads:
            stream_model = WhisperModel(str(resolved.path), device=choice.device, compute_type=choice.compute_type,
                                        cpu_threads=lane_threads, num_workers=lanes)
            log.info("Stream lane: %d workers of %d thread(s) each, on their own copy of the model", lanes,
                     lane_threads)
        # A model per further GPU, each with its own stream lane (why not one model over the list: lanes.py).
        replicas = load_replicas(WhisperModel, str(resolved.path), plan, cpu_threads=settings.cpu_threads,
                                 num_workers=model.model.num_workers)
        if replicas:
            log.info("GPUs %s: one model and one stream lane each", ",".join(map(str, plan.device_indexes)))
        log.info(
            "Model '%s' (%s, %s) loaded on %s/%s in %.1f s; %d transcription(s) at once",
            resolved.name, resolved.source, resolved.path, choice.device, choice.compute_type,
            time.perf_counter() - started, workers,
        )
        return cls(
            model,
            model_name=resolved.name,
            device=choice.device,
            compute_type=choice.compute_type,
            max_concurrent=workers,
            beam_size=settings.beam_size,
            vad_filter=settings.vad_filter,
            file_batch_size=settings.file_batch_size,
            stream_workers=lanes,
            stream_model=stream_model,
            stream_threads=lane_threads,
        ).spread_over(replicas, plan.device_indexes)

    # --- which model a call runs on (a model per GPU: see lanes.py) ---------------------------------
    @property
    def model(self):
        """The model of the running call: its lane's or file call's GPU model, else the first one."""
        here = self.__dict__.get("_here")
        current = getattr(here, "model", None) if here is not None else None
        return current if current is not None else self._models[0]

    @model.setter
    def model(self, value) -> None:
        self._models = [value]
        self._here = threading.local()  # the model each worker thread's current call runs on
        self._file_calls = [0]  # file calls running on each model
        self._spread = threading.Lock()

    @property
    def models(self) -> list:
        return list(self._models)

    def spread_over(self, replicas: Sequence, device_indexes: Sequence[int]) -> "Engine":
        """Several GPUs: ``replicas`` are the models of the GPUs after the first; each gets a stream lane
        of its own and file calls go to the least busy model (see lanes.py). Returns the engine."""
        self.device_indexes = tuple(device_indexes)
        if not replicas:
            return self
        self._models = [self._models[0], *replicas]
        self._file_calls = [0] * len(self._models)
        first = self.streams
        same = {"workers": first.workers, "group_of": short_window.clip_bucket} if hasattr(first, "workers") else {}
        lanes = [first] + [StreamScheduler(self._on_model(m, self._batch_blocking), max_batch=first.max_batch, **same)
                           for m in replicas]
        self.streams = StreamLanes(lanes, self.device_indexes, file_calls=lambda: list(self._file_calls))
        self.pool.around = self._on_least_busy
        return self

    def _on_model(self, model, fn: Callable[..., T]) -> Callable[..., T]:
        """``fn`` run with ``self.model`` being ``model`` in the calling thread."""

        def pinned(*args, **kwargs) -> T:
            before = getattr(self._here, "model", None)
            self._here.model = model
            try:
                return fn(*args, **kwargs)
            finally:
                self._here.model = before

        return pinned

    def _on_least_busy(self, work: Callable[[], T]) -> T:
        """Run a file call on the model with the fewest file calls running (ties: fewer stream sessions)."""
        sessions = self.streams.sessions() if isinstance(self.streams, StreamLanes) else [0] * len(self._models)
        with self._spread:
            i = least_loaded([(self._file_calls[k], sessions[k]) for k in range(len(self._models))])
            self._file_calls[i] += 1
        try:
            return self._on_model(self._models[i], work)()
        finally:
            with self._spread:
                self._file_calls[i] -= 1

    # --- the pool's figures (read by /health, /stats, /metrics and tests), read-only views of ModelPool ---
    max_concurrent = property(lambda self: self.pool.max_concurrent)
    active = property(lambda self: self.pool.active)
    queued = property(lambda self: self.pool.queued)
    completed = property(lambda self: self.pool.completed)
    audio_seconds = property(lambda self: self.pool.audio_seconds)
    processing_seconds = property(lambda self: self.pool.processing_seconds)
    fallbacks = property(lambda self: self.pool.fallbacks)

    # ------------------------------------------------------------------------------------------
    def normalize_language(self, language: Optional[str]) -> Optional[str]:
        """'' / 'auto' / None -> None (auto-detect); otherwise a known code, else an error."""
        if language is None:
            return None
        code = language.strip().lower()
        if code in AUTO_LANGUAGE:
            return None
        if code not in self.supported_languages:
            raise UnsupportedLanguageError(
                f"Unsupported language {echo(language)}. Leave it empty for auto-detection or use an "
                f"ISO 639-1 code this model knows (e.g. en, ko, ja, es)."
            )
        return code

    async def run_decode(self, fn: Callable[..., T], *args) -> T:
        """Run blocking audio decoding off the event loop."""
        return await self.pool.run_decode(fn, *args)

    async def run_vad(self, fn: Callable[..., T], *args) -> T:
        """Run a (short) voice-activity computation off the event loop on its own thread."""
        return await self.pool.run_vad(fn, *args)

    async def transcribe(
        self,
        audio: np.ndarray,
        language: Optional[str] = None,
        *,
        beam_size: Optional[int] = None,
        vad_filter: Optional[bool] = None,
        **options,
    ) -> TranscriptionResult:
        """Transcribe float32 16 kHz mono samples; waits for a free model slot.

        Plain file transcription (VAD on, no extra faster-whisper options) takes the chunked path: speech
        spans found by the VAD are transcribed in batches through the short window, each span one
        segment. Anything else (word timestamps, translation, prompts, temperatures ...) goes through
        faster-whisper's own ``transcribe`` with the options given.
        """
        language = self.normalize_language(language)
        beam = beam_size or self.beam_size
        use_vad = self.vad_filter if vad_filter is None else vad_filter
        if use_vad and not options and self.file_batch_size:
            return await self._run(lambda: self._chunked_blocking(audio, language, beam))
        opts = dict(beam_size=beam, vad_filter=use_vad, **options)
        return await self._run(lambda: self._transcribe_blocking(audio, language, **opts))

    async def transcribe_short(
        self, audio: np.ndarray, language: Optional[str] = None, *, pad_s: float = SHORT_PAD_S
    ) -> TranscriptionResult:
        """Quick greedy transcription of a short clip (partials): pays for the audio, not a 30 s window
        (see short_window.py). Clips too long for one window take the normal path."""
        language = self.normalize_language(language)
        return await self._run(lambda: self._batch_blocking([(audio, language)], 1, pad_s)[0])

    # --- the pool -------------------------------------------------------------------------------
    async def _run(self, work: Callable[[], TranscriptionResult]) -> TranscriptionResult:
        return await self.pool.run(work)

    # --- decoding strategies (blocking; each runs in a worker thread) -----------------------------
    def _batch_blocking(
        self,
        items: list[tuple[np.ndarray, Optional[str]]],
        beam_size: int,
        pad_s: float = SHORT_PAD_S,
        verify: Optional[bool] = None,
    ) -> list[TranscriptionResult]:
        """Short-window batch, verified by default for beam > 1 (see short_window.batch_blocking)."""
        return short_window.batch_blocking(self.model, items, beam_size, pad_s, verify, self.pool.count_fallback)

    def _verified(
        self, audio: np.ndarray, language: Optional[str], fast: TranscriptionResult, flags: DecodeFlags,
        beam_size: int,
    ) -> TranscriptionResult:
        return careful.verified(self.model, audio, language, fast, flags, beam_size, self.pool.count_fallback)

    def _chunked_blocking(self, audio: np.ndarray, language: Optional[str], beam_size: int) -> TranscriptionResult:
        return chunked.chunked_blocking(self.model, audio, language, beam_size, self.file_batch_size,
                                        self.pool.count_fallback)

    def _decode_iter(self, audio: np.ndarray, language: Optional[str], **options) -> Iterator[TranscriptionResult]:
        return native.decode_iter(self.model, audio, language, **options)

    def _transcribe_blocking(self, audio: np.ndarray, language: Optional[str], **options) -> TranscriptionResult:
        return native.transcribe_blocking(self.model, audio, language, **options)

    def close(self) -> None:
        self.streams.close()
        self.pool.close()

    # --- streaming (additive; used by the OpenAI-compatible endpoint's server-sent events) --------
    async def transcribe_stream(
        self,
        audio: np.ndarray,
        language: Optional[str] = None,
        *,
        beam_size: Optional[int] = None,
        vad_filter: Optional[bool] = None,
        **options,
    ) -> AsyncIterator[TranscriptionResult]:
        """Like :meth:`transcribe`, but yields the result so far each time a segment is decoded.

        Each yielded result's ``text`` extends the previous one's, so ``new.text[len(old.text):]`` is
        the delta. The last one yielded is complete and is counted like a :meth:`transcribe` call.
        It takes a model slot from the same pool (so the same limit and ``queued``/``active``
        counters); closing the iterator early stops decoding after the current segment.
        """
        language = self.normalize_language(language)
        opts = dict(
            beam_size=beam_size or self.beam_size,
            vad_filter=self.vad_filter if vad_filter is None else vad_filter,
            **options,
        )
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def emit(item) -> None:
            loop.call_soon_threadsafe(updates.put_nowait, item)

        def produce() -> None:
            try:
                result = None
                for result in self._decode_iter(audio, language, **opts):
                    if stop.is_set():
                        return
                    emit((False, result))
                emit((True, result))
            except BaseException as exc:  # handed to the awaiting side, raised there
                emit(exc)

        future = self.pool.submit(produce)
        try:
            while True:
                item = await updates.get()
                if isinstance(item, BaseException):
                    raise item
                done, result = item
                if done:
                    break
                yield result
        finally:
            stop.set()
            self.pool.withdraw(future)
        self.pool.record(result)
        yield result
