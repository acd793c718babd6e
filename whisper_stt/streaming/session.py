"""One connection's real-time transcription: endpointing, partials, finals.

Policy (why it is shaped like this):

* **Endpointing by voice activity.** Every 32 ms window gets a Silero speech probability. An utterance
  starts when 3 of the last 6 windows are speech (a click or a cough alone does not start one) and keeps
  0.4 s of audio from before the first speech window, so the first syllable is never cut. It ends after
  ``silence_threshold`` seconds of non-speech. Time is audio time (samples received), not wall time, so
  a client streaming faster than real time gets the same utterances.
* **Finals re-transcribe the whole utterance** with beam search, from its pre-roll to 0.35 s after the
  last speech, so words are never cut at arbitrary chunk boundaries. To meet the latency target the final
  is computed *speculatively* once the speaker has paused for ``min(0.6 s, threshold/2)``; if speech
  resumes, that result is thrown away (and if the lane has not started it yet, it is never computed);
  if the pause reaches the threshold it is sent as soon as it is ready. The session does not wait for a
  speculative final: audio goes on through the VAD meanwhile, so a pause that turns back into speech
  is seen at once.
* **Long monologues** are committed in pieces: when the open utterance reaches ``max_piece_s`` (below
  Whisper's 30 s window, and below the buffer cap) it is cut at the longest pause between ``min_piece_s``
  and the end (else at the least speech-like window), that piece is sent as a ``final`` with
  ``reason="max_length"`` and the rest starts the next piece. A cut inside a pause cannot split or repeat
  a word, and the cost of each update stays bounded.
* **Partials** re-transcribe only the open utterance, greedily (beam 1, no conditioning on earlier text,
  no timestamps), after ~0.25 s of speech and then about every second of new audio. The leading words on
  which two consecutive partials agree become ``stable_text`` and are never taken back in later partials
  of that utterance (local agreement), so displayed text does not flicker.
* **No text from non-speech.** The VAD gate stops silence, hum and noise from opening an utterance; what
  still reaches the model is filtered per segment: Whisper's own no-speech rule (no_speech_prob > 0.6 and
  avg log-prob < -1), repetition loops (gzip compression ratio > 2.4), pure sound annotations
  ("[Music]", "♪") and the classic hallucinations ("Thank you.", "Thanks for watching!") unless the model
  was confident and heard a real utterance.
* **Language** is detected per utterance (unless the client fixed it) and locked for the rest of the
  utterance once detected with probability >= 0.7 on >= 1 s of audio; until then partials report the
  most probable detection seen. Locking also saves the detection pass on later partials.
* **Off the event loop**: VAD runs through ``offload`` (the engine's VAD thread), model calls through
  the engine's stream lane (``whisper_stt.scheduler``): finals are awaited, partials are submitted as
  tasks so endpointing never waits for a preview. One worker task per session processes audio and
  commands in arrival order, so there are no races; when it falls behind it processes everything queued
  at once and skips partials instead of letting lag grow.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import wave
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Awaitable, Callable, NamedTuple, Optional

import numpy as np

from ..audio import SAMPLE_RATE, float32_to_pcm16
from ..engine import (
    UNSPACED_LANGUAGES,
    Segment,
    TranscriptionResult,
    _drop_repeated_tail,
    compression_ratio,
    join_texts,
)
from .formats import UNDECIDED_LIMIT, AudioDecoder
from .deltas import align, join_delta, norm_words, stabilise
from .events import (
    Committed,
    Event,
    Failed,
    FinalText,
    Notice,
    PartialText,
    Problem,
    SegmentTime,
    SpeechStarted,
    SpeechStopped,
    WordTime,
)
from .vad import WINDOW, StreamingVAD

log = logging.getLogger(__name__)

Emit = Callable[[Event], Awaitable[None]]
Offload = Callable[..., Awaitable[Any]]


@dataclass
class StreamingPolicy:
    """Tunables of the streaming policy (defaults chosen on the bundled base model, 2 CPU cores)."""

    speech_threshold: float = 0.5  # VAD probability that counts as speech
    neg_threshold: float = 0.35  # below this speech has stopped (hysteresis, as in Silero)
    trigger_windows: int = 3  # speech windows among the last `trigger_span` to open an utterance
    trigger_span: int = 6
    # audio kept from before the first speech window: Silero marks a soft first syllable late (0.25 s lost
    # the opening word of Russian and Spanish prompts; bench/bench_languages.py)
    pre_roll_s: float = 0.4
    post_pad_s: float = 0.35  # audio kept after the last speech window
    min_speech_s: float = 0.2  # utterances with less speech are dropped without a final
    first_partial_s: float = 0.25  # speech before the first partial
    partial_interval_s: float = 1.0  # new audio between partials
    speculative_after_s: float = 0.6  # pause after which the final is computed ahead of time
    max_piece_s: float = 24.0  # commit a monologue piece at this length
    min_piece_s: float = 8.0  # ... at a cut no earlier than this
    behind_s: float = 0.5  # more unprocessed audio than this: skip partials / speculation
    lock_language_probability: float = 0.7
    lock_language_min_s: float = 1.0
    final_beam_size: Optional[int] = None  # None: the engine's beam size (5)


@dataclass
class SessionConfig:
    language: Optional[str] = None  # None: detect per utterance
    audio_format: str = "auto"
    silence_threshold: float = 2.0
    max_buffer_s: float = 300.0
    debug_dir: Optional[Path] = None  # set when --debug: one WAV per utterance
    debug_name: str = "ws"
    endpointing: bool = True  # False: no VAD; an utterance is whatever arrives between two commit() calls
    partials: bool = True
    word_timestamps: bool = False  # finals carry per-word times (the recogniser must provide them)


# ----------------------------------------------------------------------------------------------
# text helpers
_HALLUCINATIONS = {
    "thank you", "thank you very much", "thanks for watching", "thank you for watching",
    "thanks for watching and see you next time", "please subscribe", "subscribe to my channel",
    "you", "bye", "bye bye", "so", "okay", "oh", "hmm", "uh", "um",
    "subtitles by the amaraorg community", "i'm sorry", "sous-titres réalisés para la communauté d'amaraorg",
    "sous titrage st 501", "merci", "gracias", "ご視聴ありがとうございました", "시청해주셔서 감사합니다",
}
_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|[♪♫♬🎵🎶]")
_WORD_CHARS = re.compile(r"\w", re.UNICODE)


def _norm_phrase(text: str) -> str:
    return " ".join(w for w in norm_words(text) if w)


def clean_segments(result: TranscriptionResult, speech_s: float) -> list[Segment]:
    """Drop segments that are probably not speech (see the module docstring)."""
    kept = []
    for seg in result.segments:
        text = seg.text.strip()
        if not _WORD_CHARS.search(_ANNOTATION.sub("", text)):
            continue
        if seg.no_speech_prob > 0.6 and seg.confidence < -1.0:
            continue
        if len(text) > 24 and seg.compression_ratio > 2.4:  # the engine measured it on this text
            # A loop: keep its first copy when that reads as text (someone may really have repeated
            # themselves), drop it only when nothing sane is left.
            cut = _drop_repeated_tail(text)
            if cut == text or compression_ratio(cut) > 2.4:
                continue
            seg = replace(seg, text=cut, compression_ratio=round(compression_ratio(cut), 3))
            text = cut
        if _norm_phrase(text) in _HALLUCINATIONS and (
            seg.no_speech_prob > 0.1 or seg.confidence < -0.5 or speech_s < 0.6
        ):
            continue
        kept.append(seg)
    return kept


def join_segments(segments: list[Segment], language: str) -> str:
    return join_texts((s.text for s in segments), language)


def _word_times(segments: list[Segment], offset: float, language: str) -> list[WordTime]:
    """Whisper's word timings in stream seconds. A piece without a leading space ("-disposed" after
    " ill") continues the word before it, so the words match the text's words (except in languages
    written without spaces, where every piece stands alone)."""
    out: list[WordTime] = []
    spaced = language not in UNSPACED_LANGUAGES
    for seg in segments:
        for w in seg.words or []:
            text = w.word.strip()
            if not text:
                continue
            start, end = round(offset + w.start, 3), round(offset + w.end, 3)
            if out and spaced and not w.word[:1].isspace():
                last = out[-1]
                out[-1] = WordTime(last.word + text, last.start, end, min(last.probability, w.probability))
            else:
                out.append(WordTime(text, start, end, w.probability))
    return out


# ----------------------------------------------------------------------------------------------
@dataclass
class _Utterance:
    id: int
    start_sample: int  # stream position of the first sample
    language: Optional[str]  # locked (or client-fixed) language
    windows: list = field(default_factory=list)  # float32 arrays of WINDOW samples
    probs: list = field(default_factory=list)
    last_speech_end: int = 0  # samples from the utterance start
    in_silence: bool = False
    speech_samples: int = 0
    best_language: tuple = ("", 0.0)  # most probable detection so far
    last_partial_len: int = 0  # utterance length when the last partial was computed
    partial_words: list = field(default_factory=list)  # words of the previous partial
    stable_words: list = field(default_factory=list)
    carried: list = field(default_factory=list)  # words a previous piece already sent (not sent again)
    sent: list = field(default_factory=list)  # words sent as this utterance's deltas
    speculative: Optional["_Speculation"] = None  # the final computed ahead of time, while it may still serve

    def drop_speculative(self) -> None:
        """Forget the speculative final; a lane job not started yet is withdrawn (never computed)."""
        if self.speculative is not None:
            self.speculative.task.cancel()
            self.speculative = None

    @property
    def length(self) -> int:
        return len(self.windows) * WINDOW

    def audio(self, end: Optional[int] = None) -> np.ndarray:
        if not self.windows:
            return np.zeros(0, dtype=np.float32)
        audio = np.concatenate(self.windows)
        return audio if end is None else audio[:end]


class _Speculation(NamedTuple):
    """A final computed ahead of time over an utterance's audio up to ``end``, valid while its last
    speech still ends at ``speech_end``."""

    speech_end: int
    end: int
    task: asyncio.Task  # -> TranscriptionResult

    def covers(self, speech_end: int, end: int) -> bool:
        return self.speech_end == speech_end and self.end == end


def _quiet_speculation(task: asyncio.Task) -> None:
    """A speculative final that failed is only a lost head start (the final tries again and reports)."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("speculative final failed", exc_info=task.exception())


class StreamingSession:
    """The streaming core: one stream's audio in, :mod:`~whisper_stt.streaming.events` out.

    Protocol-free: adapters (``routes/ws.py``, ``routes/realtime.py``, ``routes/deepgram.py``) feed it
    audio and commands and turn its events into their wire messages.

    Args:
        recogniser: a :class:`~whisper_stt.streaming.recogniser.Recogniser` (the engine's, or a fake).
        config: what the client asked for (validated).
        emit: coroutine taking one event.
        offload: coroutine running blocking work off the event loop (``engine.run_vad``).
        stats: optional object with ``audio_seconds`` / ``transcriptions`` / ``lag_s`` to update.
        policy: tunables; defaults are the documented policy.
        vad: an object with ``process(samples) -> probabilities per WINDOW`` and ``reset()``; default
            the Silero VAD. Tests pass scripted decisions.
    """

    def __init__(
        self,
        recogniser,
        config: SessionConfig,
        emit: Emit,
        offload: Offload,
        *,
        stats: Any = None,
        policy: Optional[StreamingPolicy] = None,
        first_utterance_id: int = 1,
        vad: Any = None,
    ) -> None:
        self.recogniser = recogniser
        self.config = config
        self.policy = policy or StreamingPolicy()
        self._emit = emit
        self._offload = offload
        self._stats = stats
        self.decoder = AudioDecoder(config.audio_format)  # type: ignore[arg-type]
        self._vad = vad if vad is not None else StreamingVAD()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._queued_samples = 0
        self._unwindowed = np.zeros(0, dtype=np.float32)
        self._stream_pos = 0  # samples that went through endpointing
        self._idle: list[tuple[np.ndarray, float]] = []  # recent windows while nobody speaks
        self._utt: Optional[_Utterance] = None
        self._manual: list[np.ndarray] = []  # manual mode: audio since the last commit
        self._manual_start = 0
        self._carry: list[str] = []  # delta words a monologue cut left for the next piece
        self._next_id = first_utterance_id
        self._last_overflow_notice = 0.0
        self._fallback_told = False
        self._task: Optional[asyncio.Task] = None
        self._partial_tasks: set[asyncio.Task] = set()
        self.finals_sent = 0
        self.partials_sent = 0

    # --- public API (event loop) ---------------------------------------------------------------
    @property
    def next_utterance_id(self) -> int:
        return self._next_id

    @property
    def threshold_samples(self) -> int:
        return int(self.config.silence_threshold * SAMPLE_RATE)

    @property
    def buffered_samples(self) -> int:
        # Undecided ``auto`` bytes count too (at most UNDECIDED_LIMIT of them).
        return (self._queued_samples + (self._utt.length if self._utt else 0) + len(self._unwindowed)
                + sum(len(m) for m in self._manual) + self.decoder.pending_bytes // 2)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ws-stream-session")

    async def feed(self, data: bytes) -> None:
        """A binary frame of 16 kHz audio in the configured ``audio_format``."""
        samples = self.decoder.feed(data)
        if self.decoder.fell_back and not self._fallback_told:
            self._fallback_told = True
            await self._emit(Notice(
                state="format_detected", audio_format="pcm16",
                message="audio_format auto could not tell float32 from pcm16 in the first "
                f"{UNDECIDED_LIMIT} bytes; treating the stream as pcm16 (send audio_format to choose).",
            ))
        await self.feed_samples(samples)

    async def feed_samples(self, samples: np.ndarray) -> None:
        """float32 16 kHz mono samples (adapters that decode their own formats). Cheap: queued only."""
        if len(samples) == 0:
            return
        if self._stats is not None:
            self._stats.audio_seconds += len(samples) / SAMPLE_RATE
        cap = int(self.config.max_buffer_s * SAMPLE_RATE)
        if self.buffered_samples + len(samples) > cap:
            # The server cannot keep up (or the cap is tiny): refuse audio rather than grow without bound.
            now = time.monotonic()
            if now - self._last_overflow_notice > 1.0:
                self._last_overflow_notice = now
                await self._emit(Problem(
                    code="BUFFER_FULL",
                    message=f"Audio buffer full ({self.config.max_buffer_s:g} s): audio is being dropped; "
                    + ("commit the buffer more often." if not self.config.endpointing
                       else "send audio no faster than real time."),
                ))
            return
        self._queued_samples += len(samples)
        self._report_lag()
        self._queue.put_nowait(("audio", samples))

    def _report_lag(self) -> None:
        """Audio received but not yet through endpointing, in seconds (shown per connection in /stats)."""
        if self._stats is not None:
            self._stats.lag_s = round(self._queued_samples / SAMPLE_RATE, 2)

    def stop(self) -> None:
        """Flush: the open utterance becomes a final, then a ``stopped`` notice."""
        self._queue.put_nowait(("stop", None))

    def commit(self) -> None:
        """End the open utterance now (manual mode: everything since the last commit) and transcribe it;
        nothing to commit gives a ``COMMIT_EMPTY`` problem. The session goes on."""
        self._queue.put_nowait(("commit", None))

    def clear(self) -> None:
        """Drop buffered audio and the open utterance, then a ``cleared`` notice."""
        self._queue.put_nowait(("clear", None))

    async def close(self) -> None:
        """Cancel the worker (client gone); nothing is sent. Safe to call twice."""
        self.recogniser.forget(self)
        if self._utt is not None:
            self._utt.drop_speculative()
        tasks = [t for t in [self._task, *self._partial_tasks] if t is not None and not t.done()]
        self._task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._drop_all()

    async def drain(self) -> None:
        """Wait until everything queued so far has been processed (tests, stop-then-close)."""
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(("barrier", done))
        await done

    async def settle(self) -> None:
        """``drain``, then wait for the previews in flight too (tests: a deterministic point)."""
        await self.drain()
        while self._partial_tasks:
            await asyncio.gather(*list(self._partial_tasks), return_exceptions=True)

    # --- worker ---------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            batch: list[np.ndarray] = []
            for kind, payload in items:
                if kind == "audio":
                    batch.append(payload)
                    continue
                if kind == "clear":
                    self._queued_samples -= sum(len(b) for b in batch)
                    batch = []
                    self._drop_all()
                    await self._emit(Notice(state="cleared", message="Buffered audio and text cleared."))
                    continue
                await self._safe(self._process(batch))
                batch = []
                if kind == "stop":
                    await self._safe(self._flush("stop"))
                    await self._emit(Notice(state="stopped", message="Stopped; the open utterance was flushed."))
                elif kind == "commit":
                    await self._safe(self._flush("commit"))
                elif kind == "barrier" and not payload.done():
                    payload.set_result(None)
            if batch:
                await self._safe(self._process(batch))
            if self._queued_samples <= self.policy.behind_s * SAMPLE_RATE and self._queue.empty():
                await self._safe(self._between_chunks())

    async def _safe(self, coro, utterance_id: Optional[int] = None) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a model failure must not kill the session
            log.exception("streaming session failed")
            await self._emit(Failed(utterance_id=utterance_id, message=f"Transcription failed: {exc}"))

    def _drop_all(self) -> None:
        while not self._queue.empty():
            kind, payload = self._queue.get_nowait()
            if kind == "barrier" and not payload.done():
                payload.set_result(None)
        self._queued_samples = 0
        self._unwindowed = np.zeros(0, dtype=np.float32)
        self._vad.reset()
        self.decoder.reset()
        self._idle = []
        if self._utt is not None:
            self._utt.drop_speculative()
        self._utt = None
        self._manual = []
        self._manual_start = self._stream_pos
        self._carry = []

    # --- audio -> endpointing ---------------------------------------------------------------------
    async def _process(self, batch: list[np.ndarray]) -> None:
        if not batch:
            return
        samples = np.concatenate(batch) if len(batch) > 1 else batch[0]
        self._queued_samples -= len(samples)
        self._report_lag()
        if not self.config.endpointing:  # manual commits: no VAD, everything is kept until commit
            if not self._manual:
                self._manual_start = self._stream_pos
            self._manual.append(samples)
            self._stream_pos += len(samples)
            return
        probs = await self._offload(self._vad.process, samples)
        audio = np.concatenate([self._unwindowed, samples])
        n = len(probs)
        self._unwindowed = audio[n * WINDOW:]
        for i in range(n):
            await self._window(audio[i * WINDOW:(i + 1) * WINDOW], float(probs[i]))

    async def _window(self, window: np.ndarray, prob: float) -> None:
        p = self.policy
        self._stream_pos += WINDOW
        utt = self._utt
        if utt is None:
            self._idle.append((window, prob))
            keep = int(p.pre_roll_s * SAMPLE_RATE) // WINDOW + p.trigger_span
            if len(self._idle) > keep:
                del self._idle[: len(self._idle) - keep]
            recent = [pr for _, pr in self._idle[-p.trigger_span:]]
            if prob >= p.speech_threshold and sum(pr >= p.speech_threshold for pr in recent) >= p.trigger_windows:
                self._open_utterance()
                await self._emit(SpeechStarted(self._utt.id, round(self._utt.start_sample / SAMPLE_RATE, 3)))
            return
        utt.windows.append(window)
        utt.probs.append(prob)
        self._update_speech(utt, prob, utt.length)
        if utt.speculative is not None and utt.speculative.speech_end != utt.last_speech_end:
            utt.drop_speculative()  # speech resumed: that final is stale
        if utt.length - utt.last_speech_end >= self.threshold_samples:
            await self._end_utterance("silence")
        elif utt.length >= self._max_piece_samples():
            await self._commit_piece()

    def _update_speech(self, utt: _Utterance, prob: float, end: int) -> None:
        p = self.policy
        if prob >= p.speech_threshold:
            utt.in_silence = False
        elif prob < p.neg_threshold:
            utt.in_silence = True
        if not utt.in_silence:
            utt.last_speech_end = end
            utt.speech_samples += WINDOW

    def _new_utterance(self, start: int, language: Optional[str]) -> _Utterance:
        utt = _Utterance(id=self._next_id, start_sample=start, language=language)
        self._next_id += 1
        utt.carried, self._carry = self._carry, []
        return utt

    def _open_utterance(self) -> None:
        p = self.policy
        span = len(self._idle) - p.trigger_span
        first = next(i for i in range(max(span, 0), len(self._idle)) if self._idle[i][1] >= p.speech_threshold)
        windows = self._idle[max(0, first - int(p.pre_roll_s * SAMPLE_RATE) // WINDOW):]
        self._idle = []
        start = self._stream_pos - len(windows) * WINDOW
        utt = self._new_utterance(start, self.config.language)
        for w, pr in windows:
            utt.windows.append(w)
            utt.probs.append(pr)
            if pr >= self.policy.speech_threshold:
                self._update_speech(utt, pr, utt.length)
        self._utt = utt

    def _max_piece_samples(self) -> int:
        limit = min(self.policy.max_piece_s, self.config.max_buffer_s * 0.75)
        return max(int(limit * SAMPLE_RATE), 2 * SAMPLE_RATE)

    # --- model calls ------------------------------------------------------------------------------
    def _final_end(self, utt: _Utterance) -> int:
        return min(utt.length, utt.last_speech_end + int(self.policy.post_pad_s * SAMPLE_RATE))

    async def _transcribe_final(self, utt: _Utterance, audio: np.ndarray) -> TranscriptionResult:
        # The stream lane runs finals before any partial, batched with other sessions' finals.
        return await self.recogniser.final(self, audio, utt.language)

    async def _end_utterance(self, reason: str) -> None:
        utt = self._utt
        self._utt = None
        if utt is None:
            return
        end = self._final_end(utt)
        # What follows the utterance is silence: its last windows become the pre-roll of the next one.
        keep = int(self.policy.pre_roll_s * SAMPLE_RATE) // WINDOW + self.policy.trigger_span
        first = -(-end // WINDOW)
        self._idle = list(zip(utt.windows[first:], utt.probs[first:]))[-keep:]
        await self._finalize(utt, end, reason)

    async def _finalize(self, utt: _Utterance, end: int, reason: str, audio: Optional[np.ndarray] = None) -> None:
        if audio is None:
            audio = utt.audio(end)
        offset = utt.start_sample / SAMPLE_RATE
        stop_s = round(offset + len(audio) / SAMPLE_RATE, 3)
        await self._emit(SpeechStopped(utt.id, stop_s, reason))
        await self._emit(Committed(utt.id, round(offset, 3), stop_s))
        if self.config.debug_dir is not None and len(audio):
            await self._offload(self._save_debug, utt, audio)
        result = None
        if utt.speech_samples >= self.policy.min_speech_s * SAMPLE_RATE:
            result = await self._speculated(utt, len(audio))
            if result is None:
                try:
                    result = await self._transcribe_final(utt, audio)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.exception("streaming final failed")
                    await self._emit(Failed(utterance_id=utt.id, message=f"Transcription failed: {exc}"))
                    return
        else:
            utt.drop_speculative()
        await self._send_final(utt, result, offset, stop_s, reason)

    @staticmethod
    async def _speculated(utt: _Utterance, length: int) -> Optional[TranscriptionResult]:
        """The speculative final's result when it covers exactly this audio (waiting for it if it is
        still running), else ``None``; a stale one is withdrawn."""
        spec, utt.speculative = utt.speculative, None
        if spec is None:
            return None
        if not spec.covers(utt.last_speech_end, length):
            spec.task.cancel()
            return None
        await asyncio.wait({spec.task})  # our own cancellation propagates; the task's outcome is read below
        if spec.task.cancelled() or spec.task.exception() is not None:
            return None  # only a head start: the caller decodes again and reports a failure
        return spec.task.result()

    async def _send_final(self, utt: _Utterance, result: Optional[TranscriptionResult], offset: float,
                          stop_s: float, reason: str) -> None:
        segments = clean_segments(result, utt.speech_samples / SAMPLE_RATE) if result is not None else []
        language = (result.language if result else "") or utt.language or utt.best_language[0] or ""
        text = join_segments(segments, language)
        words = _word_times(segments, offset, language) if self.config.word_timestamps else None
        where = align(utt.carried + utt.sent, text.split())
        tail = text.split()[where.end:]
        self._carry = where.overflow if reason == "max_length" else []
        if text:
            self.finals_sent += 1
            if self._stats is not None:
                self._stats.transcriptions += 1
        await self._emit(FinalText(
            utterance_id=utt.id,
            text=text,
            language=language,
            language_probability=result.language_probability if result else None,
            start=round(offset, 3),
            end=stop_s,
            reason=reason,
            segments=[SegmentTime(round(offset + s.start, 3), round(offset + s.end, 3), s.text, s.confidence)
                      for s in segments],
            words=words,
            delta=join_delta(bool(utt.sent), tail),
            item_text=" ".join(utt.sent + tail),
        ))

    async def _commit_piece(self) -> None:
        """A monologue reached max length: commit up to a natural pause, keep the rest open."""
        utt = self._utt
        assert utt is not None
        cut_window = self._choose_cut(utt)
        cut = cut_window * WINDOW
        rest_windows, rest_probs = utt.windows[cut_window:], utt.probs[cut_window:]
        piece_audio = utt.audio(cut)
        nxt = _Utterance(id=self._next_id, start_sample=utt.start_sample + cut, language=utt.language)
        self._next_id += 1
        nxt.best_language = utt.best_language
        for w, pr in zip(rest_windows, rest_probs):
            nxt.windows.append(w)
            nxt.probs.append(pr)
            self._update_speech(nxt, pr, nxt.length)
        nxt.in_silence = utt.in_silence
        self._utt = nxt
        utt.drop_speculative()
        await self._finalize(utt, cut, "max_length", audio=piece_audio)
        # Delta words the piece's final did not cover were spoken after the cut: the next piece has them.
        nxt.carried, self._carry = self._carry, []
        await self._emit(SpeechStarted(nxt.id, round(nxt.start_sample / SAMPLE_RATE, 3)))

    def _choose_cut(self, utt: _Utterance) -> int:
        """Window index to cut at: middle of the longest pause after min_piece_s, else the quietest."""
        p = self.policy
        probs = np.asarray(utt.probs)
        lo = min(int(p.min_piece_s * SAMPLE_RATE) // WINDOW, len(probs) // 2)
        hi = len(probs) - max(1, SAMPLE_RATE // 2 // WINDOW)  # leave at least 0.5 s in the next piece
        best, best_len, run_start = None, 0, None
        for i in range(lo, hi + 1):
            quiet = i < hi and probs[i] < p.neg_threshold
            if quiet and run_start is None:
                run_start = i
            elif not quiet and run_start is not None:
                length = i - run_start
                if length >= best_len:  # ties: the later pause
                    best, best_len = (run_start + i) // 2, length
                run_start = None
        if best is not None and best_len >= 2:
            return best
        smooth = np.convolve(probs, np.ones(3) / 3, mode="same")
        segment = smooth[lo:hi]
        return lo + int(len(segment) - 1 - np.argmin(segment[::-1])) if len(segment) else hi

    async def _between_chunks(self) -> None:
        """Caught up with the input: compute the speculative final or a partial if one is due."""
        utt = self._utt
        if utt is None:
            return
        p = self.policy
        silence = utt.length - utt.last_speech_end
        spec_after = min(p.speculative_after_s, self.config.silence_threshold / 2)
        if silence >= spec_after * SAMPLE_RATE:
            if utt.speech_samples < p.min_speech_s * SAMPLE_RATE:
                return
            spec = utt.speculative
            end = self._final_end(utt)
            if spec is None or not spec.covers(utt.last_speech_end, end):
                utt.drop_speculative()
                task = asyncio.create_task(self._transcribe_final(utt, utt.audio(end)), name="ws-speculative")
                task.add_done_callback(_quiet_speculation)
                utt.speculative = _Speculation(utt.last_speech_end, end, task)
            return
        if not self.config.partials or utt.speech_samples < p.first_partial_s * SAMPLE_RATE:
            return
        if utt.last_partial_len and utt.length - utt.last_partial_len < p.partial_interval_s * SAMPLE_RATE:
            return
        self._request_partial(utt)

    def _request_partial(self, utt: _Utterance) -> None:
        """Submit a preview without waiting for it: endpointing goes on meanwhile. A preview still
        queued when the next one is due is superseded by the scheduler (stale previews are dropped)."""
        audio = utt.audio()
        utt.last_partial_len = len(audio)
        task = asyncio.create_task(self._partial(utt, audio), name="ws-partial")
        self._partial_tasks.add(task)
        task.add_done_callback(self._partial_tasks.discard)

    async def _partial(self, utt: _Utterance, audio: np.ndarray) -> None:
        # Partials take the short-window path: greedy, no timestamps, the encoder fed only the audio that
        # exists (plus padding), and language detection from that same encoder pass.
        try:
            result = await self.recogniser.partial(self, audio, utt.language)
        except RuntimeError:  # the engine is shutting down
            return
        if result is None or self._utt is not utt:  # superseded, or cleared / ended meanwhile
            return
        if utt.language is None and result.language:
            if result.language_probability > utt.best_language[1]:
                utt.best_language = (result.language, result.language_probability)
            if (result.language_probability >= self.policy.lock_language_probability
                    and len(audio) >= self.policy.lock_language_min_s * SAMPLE_RATE):
                utt.language = result.language
        language = utt.language or utt.best_language[0] or result.language
        segments = clean_segments(result, utt.speech_samples / SAMPLE_RATE)
        words = join_segments(segments, language).split()
        if not words:
            return
        stable, unstable = stabilise(utt.stable_words, utt.partial_words, words)
        utt.stable_words, utt.partial_words = stable, words
        # What became stable since the last delta (a piece's carried-over words are not sent twice).
        where = align(utt.carried + utt.sent, stable)
        new = stable[where.end:] if not where.overflow else []
        delta = join_delta(bool(utt.sent), new)
        utt.sent = utt.sent + new
        offset = utt.start_sample / SAMPLE_RATE
        self.partials_sent += 1
        await self._emit(PartialText(
            utterance_id=utt.id,
            stable=stable,
            unstable=unstable,
            delta=delta,
            language=language,
            language_probability=result.language_probability,
            start=round(offset, 3),
            end=round(offset + len(audio) / SAMPLE_RATE, 3),
        ))

    async def _flush(self, reason: str) -> None:
        """``stop`` / ``commit``: everything received so far goes into the open utterance's final."""
        tail = self.decoder.flush() if reason == "stop" else np.zeros(0, dtype=np.float32)
        if len(tail):
            self._queued_samples += len(tail)
            await self._process([tail])
        if not self.config.endpointing:
            await self._commit_manual()
            return
        utt = self._utt
        leftover = self._unwindowed
        self._unwindowed = np.zeros(0, dtype=np.float32)
        self._vad.reset()
        if utt is None:
            self._idle = []
            self._stream_pos += len(leftover)
            if reason == "commit":
                await self._emit(Problem("COMMIT_EMPTY", "Nothing to commit: no speech since the last commit."))
            return
        self._utt = None
        self._idle = []
        end = self._final_end(utt)
        audio = utt.audio(end)
        if end >= utt.length and len(leftover):
            audio = np.concatenate([audio, leftover])
        self._stream_pos += len(leftover)
        await self._finalize(utt, end, reason, audio=audio)

    async def _commit_manual(self) -> None:
        if not self._manual:
            await self._emit(Problem("COMMIT_EMPTY", "Nothing to commit: the audio buffer is empty."))
            return
        audio = np.concatenate(self._manual)
        self._manual = []
        utt = self._new_utterance(self._manual_start, self.config.language)
        utt.windows = [audio]
        utt.speech_samples = len(audio)  # the client decided this is speech
        utt.last_speech_end = len(audio)
        self._manual_start = self._stream_pos
        await self._finalize(utt, len(audio), "commit", audio=audio)

    # --- debug --------------------------------------------------------------------------------------
    def _save_debug(self, utt: _Utterance, audio: np.ndarray) -> None:
        """Blocking file write: runs through ``offload``."""
        path = self.config.debug_dir / f"{self.config.debug_name}_utt{utt.id:04d}.wav"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with wave.open(str(path), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(SAMPLE_RATE)
                out.writeframes(float32_to_pcm16(audio))
        except OSError as exc:
            log.warning("could not save debug audio %s: %s", path, exc)
