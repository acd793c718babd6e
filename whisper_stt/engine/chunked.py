"""Files: VAD speech spans merged into chunks, decoded in batches through the short window."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable, Optional

import numpy as np

from ..audio import SAMPLE_RATE
from ..coverage import bucket_seconds
from .careful import verified
from .results import TranscriptionResult
from .short_window import bucket_groups, encode_group, short_windows
from .spans import file_chunks
from .text import join_texts
from .window import SHORT_PAD_S

DETECT_SPEECH_S = 30.0  # a file's language is judged on its first 30 s of speech, as Whisper judges its first window
# Below this probability the chunks' own judgement is not trusted and the language is judged again the way
# faster-whisper does, on a 30 s window (its language_detection_threshold). Over tests/multilingual.py's set
# (Asterisk en/es/fr/it/ru, LibriVox, espeak-ng de/ja/zh/ko) the two ways disagreed only below 0.5, except
# once where the chunks were right (zh, 0.69 against the window's wrong 0.41).
DETECT_MIN_PROBABILITY = 0.5


def detection_count(lengths_s: list[float], batch_size: int, speech_s: float = DETECT_SPEECH_S) -> int:
    """How many leading chunks the language is judged on: every chunk that starts within the first
    ``speech_s`` of speech (a file with no more speech than that is judged on all of it), at most one batch."""
    n, heard = 0, 0.0
    while n < len(lengths_s) and n < batch_size and heard < speech_s:
        heard += lengths_s[n]
        n += 1
    return n


def plan(lengths_s: list[float], batch_size: int, detect: bool, pad_s: float = SHORT_PAD_S) -> list[list[int]]:
    """Batches of chunk indices. With ``detect`` the first batch holds the chunks the language is judged
    on (:func:`detection_count`), filled up with chunks of their buckets (the same decoder calls). The
    other chunks are ordered by bucket, so that a batch's clips share few buckets, i.e. few decoder calls
    (one per bucket: the decoder's time hardly grows with the rows of a call). No clip is padded beyond its
    own bucket (that changes words). Depends on the file's chunk lengths only, never on other requests.
    """
    bucket = [bucket_seconds(s, pad_s) for s in lengths_s]
    first = detection_count(lengths_s, batch_size) if detect else 0
    rest = sorted(range(first, len(lengths_s)), key=lambda i: (bucket[i], i))
    batches: list[list[int]] = []
    if first:
        judged = {bucket[i] for i in range(first)}
        fill = [i for i in rest if bucket[i] in judged][: batch_size - first]
        batches.append(list(range(first)) + fill)
        rest = [i for i in rest if i not in fill]
    batches += [rest[k: k + batch_size] for k in range(0, len(rest), batch_size)]
    return batches


def detect_language(model, clips: list[np.ndarray], judged: int, window: Callable[[], np.ndarray],
                    encoded_groups: dict) -> tuple[str, float]:
    """One language for a file from the encoder output of its first batch (``clips``, of which the first
    ``judged`` count): each judged clip's language probabilities, averaged weighted by its length. The
    groups' encoder outputs are kept in ``encoded_groups`` for the decoding (no second encoder pass).
    When the most likely language has under ``DETECT_MIN_PROBABILITY``, faster-whisper's detection on
    ``window()`` (the file's first 30 s) decides instead."""
    rows, weights = [], []
    for bucket, group in sorted(bucket_groups([len(c) / SAMPLE_RATE for c in clips]).items()):
        if min(group) >= judged:
            continue
        encoded = encode_group(model, [clips[k] for k in group], bucket)
        encoded_groups[tuple(group)] = encoded
        for k, row in zip(group, model.model.detect_language(encoded)):
            if k < judged:
                rows.append(row)
                weights.append(len(clips[k]))
    ranked = combine_languages(rows, weights)
    if ranked[0][1] < DETECT_MIN_PROBABILITY:
        language, probability, _ = model.detect_language(window())
        return language, probability
    return ranked[0][0][2:-2], ranked[0][1]  # "<|en|>" -> "en"


def combine_languages(detected: list[list[tuple[str, float]]], weights: list[float]) -> list[tuple[str, float]]:
    """Several clips' ranked language probabilities (CTranslate2's ``detect_language`` rows) as one ranking:
    the weighted mean of each language's probability, most likely first (ties by name, deterministic)."""
    total: dict[str, float] = defaultdict(float)
    weight = sum(weights)
    for row, w in zip(detected, weights):
        for token, probability in row:
            total[token] += probability * w / weight
    return sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))


def _first_window(audio: np.ndarray, chunks: list[tuple[int, int]]) -> np.ndarray:
    """What faster-whisper would judge the language on: a file that fits one window whole, a longer one's
    first 30 s of speech (not a long silence or jingle before it)."""
    speech = audio if len(audio) <= 30 * SAMPLE_RATE else np.concatenate([audio[a:b] for a, b in chunks])
    return speech[: 30 * SAMPLE_RATE]


def chunked_blocking(
    model, audio: np.ndarray, language: Optional[str], beam_size: int, batch_size: int,
    on_fallback: Optional[Callable[[str], None]] = None,
) -> TranscriptionResult:
    """Files: VAD speech spans (merged up to ``FILE_CHUNK_S``) -> batched short-window decoding.

    Faster than feeding 30 s windows one after another (and than faster-whisper's batched pipeline,
    see bench/bench_rest.py), segments follow the speaker's pauses, and chunks do not condition on
    each other, which avoids the skipped repeats and run-on hallucinations of long sequential
    decoding. The language is detected once, on the chunks of the first 30 s of speech (all of it in a
    shorter file), from the same encoder pass that decodes them (:func:`detect_language`); when that
    judgement is unsure, on a 30 s window as faster-whisper does. Every chunk's text is
    verified (see :func:`~whisper_stt.engine.careful.verified`): a chunk that may have lost speech is
    decoded again carefully.
    """
    started = time.perf_counter()
    duration = round(len(audio) / SAMPLE_RATE, 3)
    chunks = file_chunks(audio)
    if not chunks:
        return TranscriptionResult("", language or "", 0.0, duration, [], round(time.perf_counter() - started, 3))
    if language is None and not model.model.is_multilingual:
        language = "en"
    lengths = [(b - a) / SAMPLE_RATE for a, b in chunks]
    probability = 1.0
    results: list[Optional[TranscriptionResult]] = [None] * len(chunks)
    for batch in plan(lengths, batch_size, detect=language is None):
        clips = [audio[chunks[i][0]: chunks[i][1]] for i in batch]
        encoded_groups: dict = {}
        if language is None:
            language, probability = detect_language(
                model, clips, detection_count(lengths, batch_size), lambda: _first_window(audio, chunks),
                encoded_groups)
        encodings: list = [None] * len(clips)
        out, flags = short_windows(model, [(clip, language) for clip in clips], beam_size, SHORT_PAD_S, encodings,
                                   encoded_groups)
        for i, clip, fast, flag, encoded in zip(batch, clips, out, flags, encodings):
            # verified as batch_blocking does, with the file's language (a careful decode never judges
            # it again); the edge check reuses the short window's encoder output.
            results[i] = fast if flag is None else verified(model, clip, language, fast, flag, beam_size,
                                                            on_fallback, encoded=encoded)
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
