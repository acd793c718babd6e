"""The short window's geometry and token budget (shared by the short-window decoder and file chunking)."""

from __future__ import annotations

SHORT_PAD_S = 2.0  # silence after a short-window clip: with under ~1 s the decoder loops on short inputs
SHORT_MAX_S = 29.0  # clip + padding must fit Whisper's 30 s window

TOKENS_PER_S = 12  # fast-path token budget per second of audio (CJK scripts take ~2x English's tokens)
MAX_NEW_TOKENS = 224  # Whisper's sample length: what one 30 s window may produce


def token_budget(clip_s: float) -> int:
    return int(clip_s * TOKENS_PER_S) + 10
