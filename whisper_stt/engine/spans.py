"""Voice activity (Silero, as faster-whisper's VAD filter) and how a file's speech spans become chunks."""

from __future__ import annotations

import numpy as np

from ..audio import SAMPLE_RATE
from .window import SHORT_MAX_S, SHORT_PAD_S

FILE_CHUNK_S = 15.0  # neighbouring speech spans are merged into chunks while they stay this short
# ... but one span of continuous speech is cut only past this length (a cut inside speech splits a word,
# and the decoder then tends to skip the chunk's opening: issue 9's Spanish prompt). Fits one short window.
FILE_SPAN_MAX_S = SHORT_MAX_S - SHORT_PAD_S
# Audio kept before and after each speech span: Silero often marks speech late on a soft first syllable
# (a Russian prompt's opening "Вы" was lost with 200 ms). 400 ms is faster-whisper's own VAD filter default.
FILE_SPEECH_PAD_MS = 400


def _merge_spans(spans: list[tuple[int, int]], max_len: float, max_gap: int = SAMPLE_RATE // 2) -> list:
    """Join neighbouring speech spans closer than ``max_gap`` samples while the result stays short."""
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start - merged[-1][1] <= max_gap and end - merged[-1][0] <= max_len:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


merge_spans = _merge_spans


def _speech_timestamps(audio: np.ndarray, max_speech_s: float = float("inf"), speech_pad_ms: int = 0) -> list[dict]:
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    return get_speech_timestamps(
        audio,
        VadOptions(max_speech_duration_s=max_speech_s, min_silence_duration_ms=500, speech_pad_ms=speech_pad_ms),
    )


def speech_spans(audio: np.ndarray) -> list[tuple[float, float]]:
    """Voice activity in a clip as (start, end) seconds (Silero, as faster-whisper's VAD filter)."""
    return [(sp["start"] / SAMPLE_RATE, sp["end"] / SAMPLE_RATE) for sp in _speech_timestamps(audio)]


def file_chunks(audio: np.ndarray) -> list[tuple[int, int]]:
    """A file's speech as (start, end) sample ranges: spans padded by ``FILE_SPEECH_PAD_MS``, long ones cut
    past ``FILE_SPAN_MAX_S``, neighbours merged up to ``FILE_CHUNK_S``."""
    return _merge_spans(
        [(sp["start"], sp["end"])
         for sp in _speech_timestamps(audio, FILE_SPAN_MAX_S, speech_pad_ms=FILE_SPEECH_PAD_MS)],
        FILE_CHUNK_S * SAMPLE_RATE,
    )
