"""The engine: the one shared Whisper model, its limits, and the decoding strategies around it.

One module per concern:

* ``core``: the :class:`Engine` facade (loading, language rules, the public async calls).
* ``results``: result types (``TranscriptionResult``, ``Segment``, ``Word``, ``DecodeFlags``).
* ``text``: text heuristics (decoder loops, repeated tails, joining texts).
* ``window``: the short window's geometry and token budget.
* ``spans``: voice activity and how a file's speech spans become chunks.
* ``device``: device / compute type choice and default concurrency.
* ``pools``: thread pools, the model-call limit and the counters.
* ``short_window``: the batched short-window decoder (streams' finals and partials, file chunks).
* ``careful``: when a fast result is re-decoded carefully (``fallback_reason``) and that decode.
* ``native``: faster-whisper's own ``transcribe``.
* ``chunked``: files as VAD chunks through the short window.

Every name below was importable from the old single-module ``whisper_stt.engine`` and stays so.
"""

from .careful import KEEP_LONGER_REASONS, fallback_reason
from .core import AUTO_LANGUAGE, Engine
from .device import DeviceChoice, choose_device, default_concurrency
from .native import _to_segment
from .results import BROKEN_CHAR, DecodeFlags, Segment, TranscriptionResult, UnsupportedLanguageError, Word
from .spans import (
    FILE_CHUNK_S, FILE_SPAN_MAX_S, FILE_SPEECH_PAD_MS, _merge_spans, _speech_timestamps, speech_spans,
)
from .text import (
    UNSPACED_LANGUAGES, _drop_repeated_tail, _without_loops, collapse_loop, compression_ratio, join_texts,
)
from .window import MAX_NEW_TOKENS, SHORT_MAX_S, SHORT_PAD_S, TOKENS_PER_S, token_budget

__all__ = [
    "AUTO_LANGUAGE", "BROKEN_CHAR", "DecodeFlags", "DeviceChoice", "Engine", "FILE_CHUNK_S", "FILE_SPAN_MAX_S",
    "FILE_SPEECH_PAD_MS", "KEEP_LONGER_REASONS", "MAX_NEW_TOKENS", "SHORT_MAX_S", "SHORT_PAD_S", "Segment",
    "TOKENS_PER_S", "TranscriptionResult", "UNSPACED_LANGUAGES", "UnsupportedLanguageError", "Word",
    "_drop_repeated_tail", "_merge_spans", "_speech_timestamps", "_to_segment", "_without_loops",
    "choose_device", "collapse_loop", "compression_ratio", "default_concurrency", "fallback_reason",
    "join_texts", "speech_spans", "token_budget",
]
