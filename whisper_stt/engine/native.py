"""faster-whisper's own decoding (``WhisperModel.transcribe``): options the short window does not cover
(word timestamps, translation, prompts, temperatures ...), clips too long for one window, the careful
re-decode, and files when the chunked path is off."""

from __future__ import annotations

import time
from typing import Iterator, Optional

import numpy as np

from ..audio import SAMPLE_RATE
from .results import BROKEN_CHAR, Segment, TranscriptionResult, Word


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


def decode_iter(model, audio: np.ndarray, language: Optional[str], **options) -> Iterator[TranscriptionResult]:
    """Run faster-whisper and yield the result so far after each decoded segment (call in a worker
    thread: iterating is what does the decoding work). Empty audio yields one empty result."""
    started = time.perf_counter()
    duration = round(len(audio) / SAMPLE_RATE, 3)
    if len(audio) == 0:
        yield TranscriptionResult("", language or "", 0.0, 0.0)
        return
    segments_iter, info = model.transcribe(audio, language=language, **options)
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


def transcribe_blocking(model, audio: np.ndarray, language: Optional[str], **options) -> TranscriptionResult:
    """:func:`decode_iter` run to its end: the complete result."""
    result = None
    for result in decode_iter(model, audio, language, **options):
        pass
    return result  # type: ignore[return-value]
