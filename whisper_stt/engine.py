"""The one shared Whisper model and the limits around it.

All model calls go through :class:`Engine`: it bounds how many run at once, runs them on its own thread
pool (off the event loop) and consumes faster-whisper's lazy segment generator inside the worker thread,
so the event loop never does inference work.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import AsyncIterator, Callable, Iterator, Optional, TypeVar

import numpy as np

from .audio import SAMPLE_RATE
from .config import Settings
from .models import ResolvedModel, resolve_model
from .coverage import EDGE_GAP_S, bucket_seconds, coverage_units, covers, uncovered_edges
from .scheduler import StreamScheduler
from .untrusted import echo

log = logging.getLogger(__name__)
T = TypeVar("T")

AUTO_LANGUAGE = ("", "auto", None)
SHORT_PAD_S = 2.0  # silence after a short-window clip: with under ~1 s the decoder loops on short inputs
SHORT_MAX_S = 29.0  # clip + padding must fit Whisper's 30 s window
FILE_CHUNK_S = 15.0  # neighbouring speech spans are merged into chunks while they stay this short
# ... but one span of continuous speech is cut only past this length (a cut inside speech splits a word,
# and the decoder then tends to skip the chunk's opening: issue 9's Spanish prompt). Fits one short window.
FILE_SPAN_MAX_S = SHORT_MAX_S - SHORT_PAD_S
# Audio kept before and after each speech span: Silero often marks speech late on a soft first syllable
# (a Russian prompt's opening "Вы" was lost with 200 ms). 400 ms is faster-whisper's own VAD filter default.
FILE_SPEECH_PAD_MS = 400


class UnsupportedLanguageError(ValueError):
    """The client asked for a language code the model does not know."""


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass
class Segment:
    start: float
    end: float
    text: str
    confidence: float  # the segment's average token log-probability, as in the original
    no_speech_prob: float = 0.0
    words: Optional[list[Word]] = None  # only when transcribed with word_timestamps=True
    temperature: float = 0.0
    compression_ratio: float = 0.0

    def to_public(self) -> dict:
        return {"start": self.start, "end": self.end, "text": self.text, "confidence": self.confidence}


@dataclass
class TranscriptionResult:
    text: str
    language: str
    language_probability: float
    duration: float  # seconds of audio
    segments: list[Segment] = field(default_factory=list)
    processing_time: float = 0.0  # seconds spent in the model call

    def to_dict(self) -> dict:
        return asdict(self)


BROKEN_CHAR = "\ufffd"  # what a token sequence cut inside a multi-byte UTF-8 character decodes to


def _to_segment(s) -> Segment:
    """faster-whisper's segment -> ours (rounded; words only when word timestamps were asked for).
    A character split between two segments would show as U+FFFD: it is never passed on."""
    return Segment(
        start=round(s.start, 3),
        end=round(s.end, 3),
        text=s.text.replace(BROKEN_CHAR, "").strip(),
        confidence=round(s.avg_logprob, 4),
        no_speech_prob=round(s.no_speech_prob, 4),
        words=[
            Word(round(w.start, 3), round(w.end, 3), w.word.replace(BROKEN_CHAR, ""), round(w.probability, 4))
            for w in s.words
        ]
        if s.words
        else None,
        temperature=s.temperature or 0.0,
        compression_ratio=round(s.compression_ratio, 3),
    )


def _merge_spans(spans: list[tuple[int, int]], max_len: float, max_gap: int = SAMPLE_RATE // 2) -> list:
    """Join neighbouring speech spans closer than ``max_gap`` samples while the result stays short."""
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start - merged[-1][1] <= max_gap and end - merged[-1][0] <= max_len:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def compression_ratio(text: str) -> float:
    """gzip ratio of the text, as Whisper uses it: above ~2.4 the decoder was looping."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


# Languages written without spaces between words: segment texts are joined without a separator.
UNSPACED_LANGUAGES = frozenset({"ja", "zh", "yue", "th", "lo", "my"})


def join_texts(texts, language: str) -> str:
    return ("" if language in UNSPACED_LANGUAGES else " ").join(t.strip() for t in texts if t).strip()


def _drop_repeated_tail(text: str) -> str:
    """Cut a decoder loop off the end of a short-window transcript, keeping the first copy.

    'He was not. He was not. He was' -> 'He was not.'; 'Bonjour, je voudrais ... redonner. Bonjour, je
    voudrais' -> 'Bonjour, je voudrais ... redonner.'. The end of the text is compared with the text
    ``period`` words earlier: a run of ``run`` matching words is a loop when a short phrase (2-3 words)
    repeats one and a half times more, or when 4+ words repeat exactly (rare in real speech).
    """
    words = text.split()
    n = len(words)
    for period in range(2, n - 1):
        run = 0
        # The last word may be cut short by the token budget ('... Harimu. Harimu. Harim').
        while run < n - period and (
            words[n - 1 - run] == words[n - 1 - run - period]
            or (run == 0 and words[n - 1 - period].startswith(words[n - 1]))
        ):
            run += 1
        if (period <= 3 and 2 * run >= 3 * period) or (period >= 4 and run >= 4):
            return " ".join(words[: n - run])
    return text


TOKENS_PER_S = 12  # fast-path token budget per second of audio (CJK scripts take ~2x English's tokens)
MAX_NEW_TOKENS = 224  # Whisper's sample length: what one 30 s window may produce


def token_budget(clip_s: float) -> int:
    return int(clip_s * TOKENS_PER_S) + 10


_CHAR_LOOP = re.compile(r"(\S{1,4}?)\1{3,}")


def collapse_loop(text: str) -> str:
    """A looping text's first copy: word loops ('a b c a b c a b') by the tail rule, character loops of
    unspaced scripts ('勤奸奸奸奸奸奸') by keeping one of four or more repeats."""
    return _CHAR_LOOP.sub(r"\1", _drop_repeated_tail(text)).strip()


def _without_loops(result: TranscriptionResult) -> TranscriptionResult:
    """The careful decode's last resort (sampling at temperature 1) can still loop: keep the loop's first
    copy, as the stream's filter does, instead of passing the loop on."""
    changed = False
    for seg in result.segments:
        if seg.compression_ratio > 2.4:
            cut = collapse_loop(seg.text)
            if cut != seg.text:
                seg.text, seg.compression_ratio, changed = cut, round(compression_ratio(cut), 3), True
    if changed:
        result.segments = [s for s in result.segments if s.text]
        result.text = join_texts((s.text for s in result.segments), result.language)
    return result


@dataclass(frozen=True)
class DecodeFlags:
    """What the fast decoder did to a clip's text besides decoding it."""

    truncated: bool = False  # the token budget ran out: the text may end early
    looped: bool = False  # a repeated tail was cut off
    broken: bool = False  # an invalid character (half of a multi-byte one) is in the text


# Reasons after which the careful result is kept only if it has more text than the fast one (the fast
# text was fine as far as it went); after the others the fast text itself is suspect.
KEEP_LONGER_REASONS = frozenset({"coverage", "budget", "edges"})


def fallback_reason(
    fast: TranscriptionResult, flags: DecodeFlags, speech_s: float, language: Optional[str]
) -> Optional[str]:
    """Why a fast short-window result must be decoded again carefully, or ``None`` when it is fine."""
    seg = fast.segments[0] if fast.segments else None
    if seg is None or not seg.text:
        return "empty" if speech_s > 0 else None
    if flags.truncated:
        return "budget"
    if flags.looped:
        return "loop"
    if flags.broken:
        return "broken"
    if seg.confidence < -1.0:
        return "confidence"
    if seg.compression_ratio > 2.4:
        return "compression"
    if not covers(seg.text, speech_s, language or fast.language):
        return "coverage"
    return None


def _speech_timestamps(audio: np.ndarray, max_speech_s: float = float("inf"), speech_pad_ms: int = 0) -> list[dict]:
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    return get_speech_timestamps(
        audio,
        VadOptions(max_speech_duration_s=max_speech_s, min_silence_duration_ms=500, speech_pad_ms=speech_pad_ms),
    )


def speech_spans(audio: np.ndarray) -> list[tuple[float, float]]:
    """Voice activity in a clip as (start, end) seconds (Silero, as faster-whisper's VAD filter)."""
    return [(sp["start"] / SAMPLE_RATE, sp["end"] / SAMPLE_RATE) for sp in _speech_timestamps(audio)]


@dataclass(frozen=True)
class DeviceChoice:
    device: str
    compute_type: str


def choose_device(device: str, compute_type: str) -> DeviceChoice:
    """auto -> cuda when CTranslate2 sees a usable GPU, else cpu; auto compute -> float16 / int8."""
    import ctranslate2

    if device == "auto":
        try:
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        except Exception:  # a broken CUDA install must not stop a CPU start
            device = "cpu"
    if compute_type == "auto":
        if device == "cuda":
            supported = ctranslate2.get_supported_compute_types("cuda")
            compute_type = "float16" if "float16" in supported else "int8_float32"
        else:
            compute_type = "int8"
    return DeviceChoice(device, compute_type)


def default_concurrency(device: str) -> int:
    # The original allowed 15 at once on an H100. On CPU, parallel calls only split the same cores,
    # so one call at a time using every core gives each request the lowest latency.
    return 15 if device == "cuda" else 1


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
    ) -> None:
        self.model = model
        self.model_name = model_name
        self.device = device
        self.compute_type = compute_type
        self.max_concurrent = max_concurrent
        self.beam_size = beam_size
        self.vad_filter = vad_filter
        self.file_batch_size = file_batch_size  # 0: files go through faster-whisper's sequential decoding
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
        self.supported_languages = frozenset(model.supported_languages)
        self.fallbacks: dict[str, int] = {}  # careful re-decodes by reason (see fallback_reason)
        # Real-time work (finals, partials) has its own lane and model worker: see scheduler.py.
        self.streams = StreamScheduler(self._batch_blocking, max_batch=max_stream_batch)

    @classmethod
    def load(cls, settings: Settings) -> "Engine":
        """Resolve, load and return the engine described by ``settings`` (blocking, seconds)."""
        from faster_whisper import WhisperModel

        resolved: ResolvedModel = resolve_model(settings.model, settings.models_dir)
        choice = choose_device(settings.device, settings.compute_type)
        workers = settings.max_concurrent_transcriptions or default_concurrency(choice.device)
        started = time.perf_counter()
        model = WhisperModel(
            str(resolved.path),
            device=choice.device,
            compute_type=choice.compute_type,
            cpu_threads=settings.cpu_threads,
            num_workers=workers + 1,  # + the stream lane's worker
        )
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
        )

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
        return await asyncio.get_running_loop().run_in_executor(self._decode_pool, fn, *args)

    async def run_vad(self, fn: Callable[..., T], *args) -> T:
        """Run a (short) voice-activity computation off the event loop on its own thread."""
        return await asyncio.get_running_loop().run_in_executor(self._vad_pool, fn, *args)

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
        """Quick greedy transcription of a short clip (partials): pays for the audio, not a 30 s window.

        Whisper's encoder is normally fed a 30 s window however short the audio; CTranslate2 accepts a
        shorter mel input, which makes a 2 s clip about 10x cheaper. Guards that keep it safe (measured
        on LibriVox prefixes with the base model): ``pad_s`` of trailing silence (with less the decoder
        tends to loop on short inputs), a token budget tied to the duration, and a check that drops a
        repeated tail. Language detection reuses the same encoder output instead of a second pass.
        No timestamps: one segment spanning the clip. Clips too long for one window take the normal path.
        """
        language = self.normalize_language(language)
        return await self._run(lambda: self._batch_blocking([(audio, language)], 1, pad_s)[0])

    def _submit(self, work: Callable[[], T]) -> "Future[T]":
        """Queue one model call on the pool. The pool has exactly ``max_concurrent`` threads, so it is
        the limit: a call submitted while all threads are busy waits in the pool's queue (``queued``)."""

        def job() -> T:
            with self._counts:
                self.queued -= 1
                self.active += 1
            try:
                return work()
            finally:
                with self._counts:
                    self.active -= 1

        with self._counts:
            self.queued += 1
        return self._pool.submit(job)

    def _withdraw(self, future: Future) -> None:
        """The caller went away: drop the call if it has not started (a running call cannot be
        interrupted; its result is discarded). A cancelled future's job never runs."""
        with self._counts:
            if future.cancel():
                self.queued -= 1

    def _record(self, result: TranscriptionResult) -> None:
        self.completed += 1
        self.audio_seconds += result.duration
        self.processing_seconds += result.processing_time

    async def _run(self, work: Callable[[], TranscriptionResult]) -> TranscriptionResult:
        future = self._submit(work)
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            self._withdraw(future)
            raise
        self._record(result)
        return result

    def _batch_blocking(
        self,
        items: list[tuple[np.ndarray, Optional[str]]],
        beam_size: int,
        pad_s: float = SHORT_PAD_S,
        verify: Optional[bool] = None,
    ) -> list[TranscriptionResult]:
        """Short-window transcription of several clips at once (see :meth:`_short_windows`).

        With ``verify`` (default: when ``beam_size`` > 1, i.e. finals and file chunks, not partials) each
        result is checked by :meth:`_verified` and decoded again the careful way when it may have lost
        speech: a clip's text never comes out shorter than what the model hears in it.
        """
        verify = beam_size > 1 if verify is None else verify
        results, flags = self._short_windows(items, beam_size, pad_s)
        if verify:
            for i, (audio, language) in enumerate(items):
                if flags[i] is not None:
                    results[i] = self._verified(audio, language, results[i], flags[i], beam_size)
        return results

    def _short_windows(
        self, items: list[tuple[np.ndarray, Optional[str]]], beam_size: int, pad_s: float
    ) -> tuple[list[TranscriptionResult], list[Optional[DecodeFlags]]]:
        """One encoder call over the stacked mel inputs, one batched language detection and one
        ``generate`` call per group of clips that share a padding bucket.

        Each clip is padded with silence to :func:`~whisper_stt.coverage.bucket_seconds` of its own length
        (at least ``pad_s`` of it), and only clips of the same bucket share a call, so a clip's input, its
        token budget and so its words do not depend on the other clips in the batch (a stream's text does
        not depend on other users' traffic). Clips too long for one window go through the normal path
        one by one (their flags are ``None``: nothing to verify).
        """
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer

        started = time.perf_counter()
        results: list[Optional[TranscriptionResult]] = [None] * len(items)
        flags: list[Optional[DecodeFlags]] = [None] * len(items)
        groups: dict[float, list[int]] = {}
        for i, (audio, language) in enumerate(items):
            if len(audio) == 0:
                results[i] = TranscriptionResult("", language or "", 0.0, 0.0)
            elif len(audio) / SAMPLE_RATE + pad_s > SHORT_MAX_S:
                results[i] = self._transcribe_blocking(
                    audio, language, beam_size=beam_size, vad_filter=False, condition_on_previous_text=False,
                    without_timestamps=True,
                )
            else:
                groups.setdefault(bucket_seconds(len(audio) / SAMPLE_RATE, pad_s), []).append(i)
        multilingual = self.model.model.is_multilingual
        for bucket, group in sorted(groups.items()):
            total = int(round(bucket * SAMPLE_RATE))
            mels = []
            for i in group:
                audio = items[i][0]
                padded = np.zeros(total, dtype=np.float32)
                padded[: len(audio)] = audio
                mels.append(self.model.feature_extractor(padded, padding=0))
            encoded = self.model.model.encode(
                ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(mels), dtype=np.float32)),
                to_cpu=False,
            )
            languages = [items[i][1] for i in group]
            probabilities = [1.0] * len(group)
            if multilingual and any(lang is None for lang in languages):
                detected = self.model.model.detect_language(encoded)
                for j, lang in enumerate(languages):
                    if lang is None:
                        token, probabilities[j] = detected[j][0]
                        languages[j] = token[2:-2]  # "<|en|>" -> "en"
            languages = [lang or "en" for lang in languages]
            tokenizers = [
                Tokenizer(self.model.hf_tokenizer, multilingual, task="transcribe", language=lang)
                for lang in languages
            ]
            prompts = [self.model.get_prompt(t, [], without_timestamps=True) for t in tokenizers]
            # ~3 words/s of speech is ~5 tokens/s in English; CJK scripts take more. A budget of 12/s of the
            # bucket stops runaway loops; a clip that used it all up is decoded again carefully (verify).
            # CTranslate2's Whisper generates at most max_length // 2 new tokens (Whisper's own 224-token
            # sample length at 448): ask for twice the budget.
            budget = min(token_budget(bucket - pad_s), MAX_NEW_TOKENS)
            outputs = self.model.model.generate(
                encoded,
                prompts,
                beam_size=beam_size,
                max_length=2 * budget,
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=[-1],
            )
            elapsed = time.perf_counter() - started
            for j, i in enumerate(group):
                out, tokenizer = outputs[j], tokenizers[j]
                duration = round(len(items[i][0]) / SAMPLE_RATE, 3)
                tokens = [t for t in out.sequences_ids[0] if t < tokenizer.eot]
                raw = tokenizer.decode(tokens).strip()
                # A used-up token budget can end inside a multi-byte character (half a Hangul syllable or
                # Hanzi decodes as U+FFFD): never show one; a verified clip is decoded again instead.
                whole = raw.rstrip(BROKEN_CHAR)
                text = _drop_repeated_tail(whole.replace(BROKEN_CHAR, "")).strip()
                flags[i] = DecodeFlags(
                    truncated=len(out.sequences_ids[0]) >= budget,
                    looped=text != whole.replace(BROKEN_CHAR, "").strip(),
                    broken=BROKEN_CHAR in whole,
                )
                segment = Segment(
                    start=0.0,
                    end=duration,
                    text=text,
                    confidence=round(float(out.scores[0]), 4),  # length-normalised log-probability
                    no_speech_prob=round(float(out.no_speech_prob), 4),
                    compression_ratio=round(compression_ratio(text), 3),
                )
                results[i] = TranscriptionResult(
                    text=text,
                    language=languages[j],
                    language_probability=round(float(probabilities[j]), 4),
                    duration=duration,
                    segments=[segment] if text else [],
                    processing_time=round(elapsed / len(items), 3),  # the batch's time, shared
                )
        return results, flags  # type: ignore[return-value]

    def _verified(
        self, audio: np.ndarray, language: Optional[str], fast: TranscriptionResult, flags: "DecodeFlags",
        beam_size: int,
    ) -> TranscriptionResult:
        """``fast`` unless a rule says it may have lost speech; then the careful decode's result.

        Every rule that could turn speech into less text sends the clip to the careful decode
        (faster-whisper's own, with its temperature fallback and no-speech rule) instead of shortening
        it: no text, a used-up token budget, a cut repeated tail, low confidence, a looping text, a broken
        character, too little text for the voice activity in the clip (see coverage.py), or words whose
        aligned timings leave seconds of speech untold before or after them (edges).
        """
        started = time.perf_counter()
        speech = speech_spans(audio)
        reason = fallback_reason(fast, flags, sum(b - a for a, b in speech), language)
        if reason is None and uncovered_edges(self._word_spans(audio, fast), speech):
            reason = "edges"  # the text is long enough, but its words leave speech untold at an end
        if reason is None:
            return fast
        careful = self._careful(audio, language, beam_size, speech)
        careful.processing_time = round(fast.processing_time + time.perf_counter() - started, 3)
        with self._counts:
            self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1
        lang = language or careful.language or fast.language
        fast_sane = not flags.looped and fast.segments[0].compression_ratio <= 2.4 if fast.segments else False
        if (reason in KEEP_LONGER_REASONS and fast_sane
                and coverage_units(fast.text, lang) > coverage_units(careful.text, lang)):
            log.debug("careful decode (%s) gave less text than the fast one; keeping the fast one", reason)
            return fast
        log.debug("careful decode (%s): %r -> %r", reason, fast.text, careful.text)
        return _without_loops(careful)

    def _word_spans(self, audio: np.ndarray, result: TranscriptionResult) -> list[tuple[float, float]]:
        """(start, end) of each word of a fast result's text, from Whisper's cross-attention alignment over
        the clip's own padded window (what faster-whisper's word timestamps do): where the text really
        begins and ends in the audio. Clips too short to hide untold speech are not aligned."""
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer

        duration = len(audio) / SAMPLE_RATE
        if not result.text or duration < EDGE_GAP_S + 0.5:
            return [(0.0, duration)]
        total = int(round(bucket_seconds(duration, SHORT_PAD_S) * SAMPLE_RATE))
        padded = np.zeros(max(total, len(audio)), dtype=np.float32)
        padded[: len(audio)] = audio
        mel = self.model.feature_extractor(padded, padding=0)
        encoded = self.model.model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None], dtype=np.float32)), to_cpu=False
        )
        tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe",
                              language=result.language or "en")
        tokens = tokenizer.encode(" " + result.text.strip())
        words = self.model.find_alignment(tokenizer, [tokens], encoded, len(audio) // 160)[0]
        spans = [(float(w["start"]), float(w["end"])) for w in words if w["word"].strip()]
        if not spans:
            return [(0.0, duration)]
        # The alignment stretches the first and last words over whatever lies beyond them (as faster-whisper
        # does, cap them at twice the median word length) so that skipped speech shows as a gap.
        cap = 2 * max(float(np.median([b - a for a, b in spans])), 0.2)
        spans[0] = (max(spans[0][0], spans[0][1] - cap), spans[0][1])
        spans[-1] = (spans[-1][0], min(spans[-1][1], spans[-1][0] + cap))
        return spans

    def _careful(
        self, audio: np.ndarray, language: Optional[str], beam_size: int, speech: list[tuple[float, float]]
    ) -> TranscriptionResult:
        """faster-whisper's sequential decode of one clip; speech it left untold at either end (the decoder
        skipped a hard opening, or stopped early) is decoded on its own and added."""
        result = self._transcribe_blocking(
            audio, language, beam_size=beam_size, vad_filter=False, condition_on_previous_text=False,
            word_timestamps=True,
        )
        if not result.segments:
            return result
        # Word timings show a skipped opening that segment timings hide (a segment may start at 0.0
        # and still begin with words spoken seconds later).
        spans = [(w.start, w.end) for s in result.segments for w in (s.words or [])] or [
            (s.start, s.end) for s in result.segments
        ]
        for seg in result.segments:
            seg.words = None  # asked for here only; callers did not ask for word timings
        gaps = uncovered_edges(spans, speech)
        for a, b in gaps:
            lo, hi = max(0, int(a * SAMPLE_RATE) - SAMPLE_RATE // 5), min(len(audio), int(b * SAMPLE_RATE) + SAMPLE_RATE // 5)
            extra = self._transcribe_blocking(
                audio[lo:hi], result.language, beam_size=beam_size, vad_filter=False,
                condition_on_previous_text=False, without_timestamps=True,
            )
            for seg in extra.segments:
                seg.start = round(seg.start + lo / SAMPLE_RATE, 3)
                seg.end = round(min(seg.end + lo / SAMPLE_RATE, b), 3)
            if extra.segments:
                log.debug("careful decode left %.1f-%.1f s untold: %r", a, b, extra.text)
                result.segments = sorted(result.segments + extra.segments, key=lambda s: s.start)
        if gaps:
            result.text = join_texts((s.text for s in result.segments), result.language)
        return result

    def _chunked_blocking(self, audio: np.ndarray, language: Optional[str], beam_size: int) -> TranscriptionResult:
        """Files: VAD speech spans (merged up to ``FILE_CHUNK_S``) -> batched short-window decoding.

        Faster than feeding 30 s windows one after another (and than faster-whisper's batched pipeline,
        see bench/bench_rest.py), segments follow the speaker's pauses, and chunks do not condition on
        each other, which avoids the skipped repeats and run-on hallucinations of long sequential
        decoding. The language is detected once, on the first 30 s of speech. Every chunk's text is
        verified (see :meth:`_verified`): a chunk that may have lost speech is decoded again carefully.
        """
        started = time.perf_counter()
        duration = round(len(audio) / SAMPLE_RATE, 3)
        chunks = _merge_spans(
            [(sp["start"], sp["end"])
             for sp in _speech_timestamps(audio, FILE_SPAN_MAX_S, speech_pad_ms=FILE_SPEECH_PAD_MS)],
            FILE_CHUNK_S * SAMPLE_RATE,
        )
        if not chunks:
            return TranscriptionResult("", language or "", 0.0, duration, [], round(time.perf_counter() - started, 3))
        probability = 1.0
        if language is None and not self.model.model.is_multilingual:
            language = "en"
        elif language is None:
            # A file that fits one window is judged whole, as faster-whisper does; a longer one on its first
            # 30 s of speech (not on a long silence or jingle before it).
            speech = audio if len(audio) <= 30 * SAMPLE_RATE else np.concatenate([audio[a:b] for a, b in chunks])
            language, probability, _ = self.model.detect_language(speech[: 30 * SAMPLE_RATE])
        results: list[TranscriptionResult] = []
        for i in range(0, len(chunks), self.file_batch_size):
            group = chunks[i: i + self.file_batch_size]
            results += self._batch_blocking([(audio[a:b], language) for a, b in group], beam_size, verify=True)
        segments, pieces = [], []
        for (a, b), result in zip(chunks, results):
            for seg in result.segments:
                if not seg.text:
                    continue
                if len(result.segments) == 1 and seg.start == 0.0 and seg.end == result.duration:
                    seg.end = (b - a) / SAMPLE_RATE  # the short window's one segment spans the chunk
                seg.start = round(a / SAMPLE_RATE + seg.start, 3)
                seg.end = round(a / SAMPLE_RATE + seg.end, 3)
                segments.append(seg)
                pieces.append(seg.text)
        return TranscriptionResult(
            text=join_texts(pieces, language),
            language=language,
            language_probability=round(float(probability), 4),
            duration=duration,
            segments=segments,
            processing_time=round(time.perf_counter() - started, 3),
        )

    def _decode_iter(self, audio: np.ndarray, language: Optional[str], **options) -> Iterator[TranscriptionResult]:
        """Run faster-whisper and yield the result so far after each decoded segment (call in a worker
        thread: iterating is what does the decoding work). Empty audio yields one empty result."""
        started = time.perf_counter()
        duration = round(len(audio) / SAMPLE_RATE, 3)
        if len(audio) == 0:
            yield TranscriptionResult("", language or "", 0.0, 0.0)
            return
        segments_iter, info = self.model.transcribe(audio, language=language, **options)
        segments: list[Segment] = []
        pieces: list[str] = []

        def so_far() -> TranscriptionResult:
            return TranscriptionResult(
                # Whisper puts the word separator at the start of a segment's text (none for ja/zh),
                # so joining the raw texts spaces every language correctly.
                text="".join(pieces).strip(),
                language=info.language,
                language_probability=round(float(info.language_probability), 4),
                duration=duration,
                segments=list(segments),
                processing_time=round(time.perf_counter() - started, 3),
            )

        for s in segments_iter:
            pieces.append(s.text.replace(BROKEN_CHAR, ""))
            segments.append(_to_segment(s))
            yield so_far()
        if not segments:
            yield so_far()

    def _transcribe_blocking(self, audio: np.ndarray, language: Optional[str], **options) -> TranscriptionResult:
        result = None
        for result in self._decode_iter(audio, language, **options):
            pass
        return result  # type: ignore[return-value]

    def close(self) -> None:
        self.streams.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._vad_pool.shutdown(wait=False, cancel_futures=True)

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

        future = self._submit(produce)
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
            self._withdraw(future)
        self._record(result)
        yield result
