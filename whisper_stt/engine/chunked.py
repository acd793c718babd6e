"""Files: VAD speech spans merged into chunks, decoded in batches through the short window."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable, Optional

import numpy as np

from ..audio import SAMPLE_RATE
from ..coverage import bucket_seconds
from .results import TranscriptionResult
from .careful import verified
from .short_window import short_windows
from .spans import file_chunks
from .text import join_texts
from .window import SHORT_MAX_S, SHORT_PAD_S

DETECT_SPEECH_S = 30.0  # a file's language is judged on its first 30 s of speech, as Whisper judges its first window
# Below this probability the chunks' own judgement is not trusted and the language is judged again the way
# faster-whisper does, on a 30 s window (its language_detection_threshold). Over tests/multilingual.py's set
# (Asterisk en/es/fr/it/ru, LibriVox, espeak-ng de/ja/zh/ko) the two ways disagreed only below 0.5, except
# once where the chunks were right (zh, 0.69 against the window's wrong 0.41).
DETECT_MIN_PROBABILITY = 0.5

# What a short-window batch costs on the CPU (bundled base int8, measured with bench/bench_rest.py's files):
# the encoder is compute-bound, ~15 ms per padded second of each clip; the decoder is bound by reading its
# weights, ~11 ms per token step plus ~1 ms per row (beam x clips) of the call, and English takes ~4 tokens
# per second of speech. These decide when a file's shorter chunks are padded up to share a longer bucket's
# decoder call (fewer, fuller calls) and when the extra encoder work would cost more than it saves.
ENCODE_MS_PER_S = 15.0
STEP_MS = 11.0
STEP_MS_PER_ROW = 1.0
TOKENS_PER_SPEECH_S = 4.0


def _decode_ms(lengths_s: list[float], beam_size: int) -> float:
    """Estimated cost of one ``generate`` call over clips of these lengths (the longest sets the steps)."""
    steps = TOKENS_PER_SPEECH_S * max(lengths_s) + 3
    return steps * (STEP_MS + STEP_MS_PER_ROW * beam_size * len(lengths_s))


def merge_buckets(lengths_s: list[float], beam_size: int, pad_s: float = SHORT_PAD_S,
                  floors: Optional[list[float]] = None) -> list[float]:
    """The bucket each clip of one batch is padded to: its own (:func:`~whisper_stt.coverage.bucket_seconds`,
    at least its ``floors`` entry), or a longer one of the same batch when sharing that bucket's decoder
    call saves more decoder time than the extra padding costs the encoder. Pure and deterministic:
    depends on the lengths (and floors) only."""
    own = [max(bucket_seconds(s, pad_s), floors[k] if floors else 0.0) for k, s in enumerate(lengths_s)]
    groups: dict[float, list[float]] = defaultdict(list)
    for s, b in zip(lengths_s, own):
        groups[b].append(s)
    target = {b: b for b in groups}
    order = sorted(groups)
    while len(order) > 1:
        best, best_gain = None, 0.0
        for k in range(len(order) - 1):
            small, big = order[k], order[k + 1]
            merged = groups[small] + groups[big]
            gain = (_decode_ms(groups[small], beam_size) + _decode_ms(groups[big], beam_size)
                    - _decode_ms(merged, beam_size) - ENCODE_MS_PER_S * len(groups[small]) * (big - small))
            if gain > best_gain:
                best, best_gain = k, gain
        if best is None:
            break
        small, big = order[best], order[best + 1]
        groups[big] += groups.pop(small)
        for b, t in target.items():
            if t == small:
                target[b] = big
        order.pop(best)
    return [target[b] for b in own]


def detection_count(lengths_s: list[float], batch_size: int, speech_s: float = DETECT_SPEECH_S) -> int:
    """How many leading chunks the language is judged on: every chunk that starts within the first
    ``speech_s`` of speech (a file with no more speech than that is judged on all of it), at most one batch."""
    n, heard = 0, 0.0
    while n < len(lengths_s) and n < batch_size and heard < speech_s:
        heard += lengths_s[n]
        n += 1
    return n


def plan(lengths_s: list[float], beam_size: int, batch_size: int, detect: bool,
         pad_s: float = SHORT_PAD_S) -> list[list[tuple[int, float]]]:
    """Batches of (chunk index, bucket it is padded to).

    With ``detect`` the first batch holds the chunks the language is judged on, all padded to their
    longest bucket so that one encoder call feeds both the detection and their decoding, and is filled up
    with the other chunks of buckets nearest that one. The other chunks are ordered by bucket (so a batch's
    clips share few buckets, i.e. few decoder calls), cut into batches of ``batch_size``, and in each
    batch buckets are merged where that pays (:func:`merge_buckets`). Depends on the file's chunk lengths
    only, never on other requests.
    """
    bucket = [bucket_seconds(s, pad_s) for s in lengths_s]
    first = detection_count(lengths_s, batch_size) if detect else 0
    rest = list(range(first, len(lengths_s)))
    batches: list[list[int]] = []
    floors: list[list[float]] = []
    if first:
        top = max(bucket[:first])
        rest.sort(key=lambda i: (abs(bucket[i] - top), i))
        batches.append(list(range(first)) + rest[: batch_size - first])
        floors.append([top] * first + [0.0] * len(batches[0][first:]))
        rest = rest[batch_size - first:]
    rest.sort(key=lambda i: (bucket[i], i))
    for k in range(0, len(rest), batch_size):
        batches.append(rest[k: k + batch_size])
        floors.append([0.0] * len(batches[-1]))
    return [list(zip(batch, merge_buckets([lengths_s[i] for i in batch], beam_size, pad_s, floor)))
            for batch, floor in zip(batches, floors)]


def padded_to(audio: np.ndarray, bucket: float, pad_s: float = SHORT_PAD_S) -> np.ndarray:
    """``audio`` with silence appended so that the short window pads it to ``bucket`` (what it does with
    its own zeros anyway: the encoder sees the same input as a clip of that bucket)."""
    if bucket_seconds(len(audio) / SAMPLE_RATE, pad_s) == bucket:
        return audio
    n = int(round((min(bucket, SHORT_MAX_S) - pad_s) * SAMPLE_RATE))
    out = np.zeros(max(n, len(audio)), dtype=np.float32)
    out[: len(audio)] = audio
    assert bucket_seconds(len(out) / SAMPLE_RATE, pad_s) == bucket, (len(audio), bucket)
    return out


def _unpad(result: TranscriptionResult, seconds: float) -> None:
    """A short-window result of a chunk padded by :func:`padded_to`, back to the chunk's own length."""
    seconds = round(seconds, 3)
    if result.duration > seconds:
        for seg in result.segments:  # the fast path's one segment spans the clip
            seg.end = min(seg.end, seconds)
        result.duration = seconds


def one_language(model, weights: list[float], window: Callable[[], np.ndarray]) -> Callable:
    """A ``detect`` for :func:`~whisper_stt.engine.short_window.short_windows`: the language probabilities
    of the clips averaged (weighted by ``weights``, their lengths), the same ranking for each: one
    language per file (:func:`plan` puts every clip whose language is judged in one bucket, one call).
    When the most likely language has under ``DETECT_MIN_PROBABILITY``, faster-whisper's detection on
    ``window()`` (the file's first 30 s) decides instead."""

    def detect(encoded, group: list[int]) -> list:
        ranked = combine_languages(model.model.detect_language(encoded), [weights[i] for i in group])
        if ranked[0][1] < DETECT_MIN_PROBABILITY:
            _, _, probabilities = model.detect_language(window())
            ranked = [(f"<|{lang}|>", p) for lang, p in probabilities]
        return [ranked] * len(group)

    return detect


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
    shorter file), from the same encoder pass that decodes them (:func:`plan`); when that judgement is
    unsure, on a 30 s window as faster-whisper does (:func:`one_language`). Every chunk's text is
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
    batches = plan(lengths, beam_size, batch_size, detect=language is None)
    probability = 1.0
    results: list[Optional[TranscriptionResult]] = [None] * len(chunks)
    for batch in batches:
        clips = [audio[chunks[i][0]: chunks[i][1]] for i, _ in batch]
        items = [(padded_to(clip, bucket), language) for clip, (_, bucket) in zip(clips, batch)]
        encodings: list = [None] * len(items)
        detect = one_language(model, [len(clip) for clip in clips], lambda: _first_window(audio, chunks)) \
            if language is None else None
        out, flags = short_windows(model, items, beam_size, SHORT_PAD_S, encodings, detect)
        if language is None:
            language, probability = out[0].language, out[0].language_probability
        for (i, _), clip, fast, flag, encoded in zip(batch, clips, out, flags, encodings):
            _unpad(fast, len(clip) / SAMPLE_RATE)
            # verified as batch_blocking does, on the chunk itself (its own VAD, careful decode and word
            # timings) with the file's language; the edge check reuses the padded window's encoder output.
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
