"""Files: VAD speech spans merged into chunks, decoded in batches through the short window."""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np

from ..audio import SAMPLE_RATE
from .results import TranscriptionResult
from .short_window import batch_blocking
from .spans import file_chunks
from .text import join_texts


def chunked_blocking(
    model, audio: np.ndarray, language: Optional[str], beam_size: int, batch_size: int,
    on_fallback: Optional[Callable[[str], None]] = None,
) -> TranscriptionResult:
    """Files: VAD speech spans (merged up to ``FILE_CHUNK_S``) -> batched short-window decoding.

    Faster than feeding 30 s windows one after another (and than faster-whisper's batched pipeline,
    see bench/bench_rest.py), segments follow the speaker's pauses, and chunks do not condition on
    each other, which avoids the skipped repeats and run-on hallucinations of long sequential
    decoding. The language is detected once, on the first 30 s of speech. Every chunk's text is
    verified (see :func:`~whisper_stt.engine.careful.verified`): a chunk that may have lost speech is
    decoded again carefully.
    """
    started = time.perf_counter()
    duration = round(len(audio) / SAMPLE_RATE, 3)
    chunks = file_chunks(audio)
    if not chunks:
        return TranscriptionResult("", language or "", 0.0, duration, [], round(time.perf_counter() - started, 3))
    probability = 1.0
    if language is None and not model.model.is_multilingual:
        language = "en"
    elif language is None:
        # A file that fits one window is judged whole, as faster-whisper does; a longer one on its first
        # 30 s of speech (not on a long silence or jingle before it).
        speech = audio if len(audio) <= 30 * SAMPLE_RATE else np.concatenate([audio[a:b] for a, b in chunks])
        language, probability, _ = model.detect_language(speech[: 30 * SAMPLE_RATE])
    results: list[TranscriptionResult] = []
    for i in range(0, len(chunks), batch_size):
        group = chunks[i: i + batch_size]
        results += batch_blocking(model, [(audio[a:b], language) for a, b in group], beam_size, verify=True,
                                  on_fallback=on_fallback)
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
