"""The careful fallback: when a fast short-window result may have lost speech, and the careful decode
(faster-whisper's own, with its temperature fallback and no-speech rule) that replaces it."""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import numpy as np

from ..audio import SAMPLE_RATE
from ..coverage import EDGE_GAP_S, bucket_seconds, coverage_units, covers, uncovered_edges
from .native import transcribe_blocking
from .results import DecodeFlags, TranscriptionResult
from .spans import speech_spans
from .text import LOOP_COMPRESSION, _without_loops, join_texts
from .window import SHORT_PAD_S

log = logging.getLogger(__name__)

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
    if seg.compression_ratio > LOOP_COMPRESSION:
        return "compression"
    if not covers(seg.text, speech_s, language or fast.language):
        return "coverage"
    return None


def keep_fast(reason: str, fast: TranscriptionResult, flags: DecodeFlags, careful: TranscriptionResult,
              language: str) -> bool:
    """After a careful decode for ``reason``: whether the fast text stays (it was sane, the reason only
    said it might be short, and the careful decode came back with less)."""
    fast_sane = not flags.looped and fast.segments[0].compression_ratio <= LOOP_COMPRESSION if fast.segments else False
    return (reason in KEEP_LONGER_REASONS and fast_sane
            and coverage_units(fast.text, language) > coverage_units(careful.text, language))


def verified(
    model, audio: np.ndarray, language: Optional[str], fast: TranscriptionResult, flags: DecodeFlags,
    beam_size: int, on_fallback: Optional[Callable[[str], None]] = None, *, encoded=None,
) -> TranscriptionResult:
    """``fast`` unless a rule says it may have lost speech; then the careful decode's result.

    Every rule that could turn speech into less text sends the clip to the careful decode
    (faster-whisper's own, with its temperature fallback and no-speech rule) instead of shortening
    it: no text, a used-up token budget, a cut repeated tail, low confidence, a looping text, a broken
    character, too little text for the voice activity in the clip (see coverage.py), or words whose
    aligned timings leave seconds of speech untold before or after them (edges). ``on_fallback`` is told
    the reason of each careful decode (the engine counts them). ``encoded``: the clip's encoder output
    over its short window, when the caller has it (see :func:`word_spans`).
    """
    started = time.perf_counter()
    speech = speech_spans(audio)
    reason = fallback_reason(fast, flags, sum(b - a for a, b in speech), language)
    if reason is None and uncovered_edges(word_spans(model, audio, fast, encoded), speech):
        reason = "edges"  # the text is long enough, but its words leave speech untold at an end
    if reason is None:
        return fast
    result = careful(model, audio, language, beam_size, speech)
    result.processing_time = round(fast.processing_time + time.perf_counter() - started, 3)
    if on_fallback is not None:
        on_fallback(reason)
    if keep_fast(reason, fast, flags, result, language or result.language or fast.language):
        log.debug("careful decode (%s) gave less text than the fast one; keeping the fast one", reason)
        return fast
    log.debug("careful decode (%s): %r -> %r", reason, fast.text, result.text)
    return _without_loops(result)


def word_spans(model, audio: np.ndarray, result: TranscriptionResult, encoded=None) -> list[tuple[float, float]]:
    """(start, end) of each word of a fast result's text, from Whisper's cross-attention alignment over
    the clip's own padded window (what faster-whisper's word timestamps do): where the text really
    begins and ends in the audio. Clips too short to hide untold speech are not aligned. ``encoded`` (an
    object whose ``view()`` is the encoder output of that same padded window, e.g. the short-window
    batch's) saves the encoder pass."""
    from faster_whisper.tokenizer import Tokenizer

    duration = len(audio) / SAMPLE_RATE
    if not result.text or duration < EDGE_GAP_S + 0.5:
        return [(0.0, duration)]
    if encoded is not None:
        encoded = encoded.view()
    else:
        total = int(round(bucket_seconds(duration, SHORT_PAD_S) * SAMPLE_RATE))
        padded = np.zeros(max(total, len(audio)), dtype=np.float32)
        padded[: len(audio)] = audio
        mel = model.feature_extractor(padded, padding=0)
        encoded = model.encode(mel.astype(np.float32, copy=False))  # on the GPU, or the CPU when replicated
    tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe",
                          language=result.language or "en")
    tokens = tokenizer.encode(" " + result.text.strip())
    words = model.find_alignment(tokenizer, [tokens], encoded, len(audio) // 160)[0]
    spans = [(float(w["start"]), float(w["end"])) for w in words if w["word"].strip()]
    if not spans:
        return [(0.0, duration)]
    # The alignment stretches the first and last words over whatever lies beyond them (as faster-whisper
    # does, cap them at twice the median word length) so that skipped speech shows as a gap.
    cap = 2 * max(float(np.median([b - a for a, b in spans])), 0.2)
    spans[0] = (max(spans[0][0], spans[0][1] - cap), spans[0][1])
    spans[-1] = (spans[-1][0], min(spans[-1][1], spans[-1][0] + cap))
    return spans


def careful(
    model, audio: np.ndarray, language: Optional[str], beam_size: int, speech: list[tuple[float, float]]
) -> TranscriptionResult:
    """faster-whisper's sequential decode of one clip; speech it left untold at either end (the decoder
    skipped a hard opening, or stopped early) is decoded on its own and added."""
    result = transcribe_blocking(
        model, audio, language, beam_size=beam_size, vad_filter=False, condition_on_previous_text=False,
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
        extra = transcribe_blocking(
            model, audio[lo:hi], result.language, beam_size=beam_size, vad_filter=False,
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
