"""The short-window batch decoder: several short clips at once, each padded only to a bucket of its own
length instead of Whisper's 30 s window (finals and partials of streams, and file chunks).

Whisper's encoder is normally fed a 30 s window however short the audio; CTranslate2 accepts a shorter
mel input, which makes a 2 s clip about 10x cheaper. Guards that keep it safe (measured on LibriVox
prefixes with the base model): trailing silence (``SHORT_PAD_S``; with less the decoder tends to loop on
short inputs), a token budget tied to the duration, and a check that drops a repeated tail. Language
detection reuses the same encoder output instead of a second pass. No timestamps: one segment per clip.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np

from ..audio import SAMPLE_RATE
from ..coverage import bucket_seconds
from .careful import verified
from .native import transcribe_blocking
from .results import BROKEN_CHAR, DecodeFlags, Segment, TranscriptionResult
from .text import _drop_repeated_tail, compression_ratio
from .window import MAX_NEW_TOKENS, SHORT_MAX_S, SHORT_PAD_S, token_budget

Clip = tuple[np.ndarray, Optional[str]]


def batch_blocking(
    model,
    items: list[Clip],
    beam_size: int,
    pad_s: float = SHORT_PAD_S,
    verify: Optional[bool] = None,
    on_fallback: Optional[Callable[[str], None]] = None,
) -> list[TranscriptionResult]:
    """Short-window transcription of several clips at once (see :func:`short_windows`).

    With ``verify`` (default: when ``beam_size`` > 1, i.e. finals and file chunks, not partials) each
    result is checked by :func:`~whisper_stt.engine.careful.verified` and decoded again the careful way
    when it may have lost speech: a clip's text never comes out shorter than what the model hears in it.
    """
    verify = beam_size > 1 if verify is None else verify
    # The edge check aligns a clip's words over the same padded window the batch just encoded: it reuses
    # that encoder output instead of a second pass (a quarter of the stream lane's time; issue 15).
    encodings: Optional[list] = [None] * len(items) if verify and pad_s == SHORT_PAD_S else None
    results, flags = short_windows(model, items, beam_size, pad_s, encodings)
    if verify:
        for i, (audio, language) in enumerate(items):
            if flags[i] is not None:
                results[i] = verified(model, audio, language, results[i], flags[i], beam_size, on_fallback,
                                      encoded=encodings[i] if encodings is not None else None)
    return results


class EncodedClip:
    """One clip's rows of a batch's encoder output, held on the CPU; ``view()`` is a batch of one for
    CTranslate2 (no copy). Encoding a clip alone or in a batch gives the same output on the CPU."""

    def __init__(self, rows: np.ndarray, index: int) -> None:
        self._rows, self._index = rows, index

    def view(self):
        import ctranslate2

        return ctranslate2.StorageView.from_array(self._rows[self._index: self._index + 1])


def _per_clip(encoded, n: int) -> list[Optional[EncodedClip]]:
    """``encoded``'s clips one by one when it lives on the CPU (on a GPU the edge check encodes again:
    cheap there, and a copy to the host would cost more than it saves)."""
    if getattr(encoded, "device", "cpu") != "cpu":
        return [None] * n
    rows = np.asarray(encoded)  # shares the StorageView's memory; EncodedClip keeps the array alive
    return [EncodedClip(rows, j) for j in range(n)]


def clip_bucket(audio: np.ndarray, pad_s: float = SHORT_PAD_S) -> float:
    """The padding bucket a clip is decoded in (clips share decoder calls only within one bucket)."""
    return bucket_seconds(len(audio) / SAMPLE_RATE, pad_s)


def bucket_groups(lengths_s: list[float], pad_s: float = SHORT_PAD_S) -> dict[float, list[int]]:
    """The groups :func:`short_windows` decodes together: the indices of the clips (by their lengths in
    seconds) that take the short window, by padding bucket, in the given order. Empty clips and clips too
    long for one window with their padding are in no group."""
    groups: dict[float, list[int]] = {}
    for k, s in enumerate(lengths_s):
        if 0 < s and s + pad_s <= SHORT_MAX_S:
            groups.setdefault(bucket_seconds(s, pad_s), []).append(k)
    return groups


def encode_group(model, clips: list[np.ndarray], bucket: float):
    """The encoder output of clips of one bucket, each padded with silence to ``bucket`` seconds."""
    total = int(round(bucket * SAMPLE_RATE))
    mels = []
    for audio in clips:
        padded = np.zeros(total, dtype=np.float32)
        padded[: len(audio)] = audio
        mels.append(model.feature_extractor(padded, padding=0))
    # WhisperModel.encode keeps the output on the GPU, or moves it to the CPU when the model is
    # replicated on several GPUs (the next call may run on another one).
    return model.encode(np.stack(mels).astype(np.float32, copy=False))


def short_windows(
    model, items: list[Clip], beam_size: int, pad_s: float, encodings: Optional[list] = None,
    encoded_groups: Optional[dict] = None,
) -> tuple[list[TranscriptionResult], list[Optional[DecodeFlags]]]:
    """One encoder call over the stacked mel inputs, one batched language detection and one
    ``generate`` call per group of clips that share a padding bucket.

    Each clip is padded with silence to :func:`~whisper_stt.coverage.bucket_seconds` of its own length
    (at least ``pad_s`` of it), and only clips of the same bucket share a call, so a clip's input, its
    token budget and so its words do not depend on the other clips in the batch (a stream's text does
    not depend on other users' traffic). Clips too long for one window go through the normal path
    one by one (their flags are ``None``: nothing to verify). With ``encodings`` (a list as long as
    ``items``) each clip's encoder output is put there as an :class:`EncodedClip` for later passes.
    ``encoded_groups`` maps a group (the tuple of its indices into ``items``) to its :func:`encode_group`
    output when the caller already has it (chunked.py detects a file's language on it first).
    """
    from faster_whisper.tokenizer import Tokenizer

    started = time.perf_counter()
    results: list[Optional[TranscriptionResult]] = [None] * len(items)
    flags: list[Optional[DecodeFlags]] = [None] * len(items)
    lengths = [len(audio) / SAMPLE_RATE for audio, _ in items]
    groups = bucket_groups(lengths, pad_s)
    for i, (audio, language) in enumerate(items):
        if len(audio) == 0:
            results[i] = TranscriptionResult("", language or "", 0.0, 0.0)
        elif lengths[i] + pad_s > SHORT_MAX_S:
            results[i] = transcribe_blocking(
                model, audio, language, beam_size=beam_size, vad_filter=False, condition_on_previous_text=False,
                without_timestamps=True,
            )
    multilingual = model.model.is_multilingual
    for bucket, group in sorted(groups.items()):
        encoded = (encoded_groups or {}).get(tuple(group))
        if encoded is None:
            encoded = encode_group(model, [items[i][0] for i in group], bucket)
        if encodings is not None:
            for i, clip in zip(group, _per_clip(encoded, len(group))):
                encodings[i] = clip
        languages = [items[i][1] for i in group]
        probabilities = [1.0] * len(group)
        if multilingual and any(lang is None for lang in languages):
            detected = model.model.detect_language(encoded)
            for j, lang in enumerate(languages):
                if lang is None:
                    token, probabilities[j] = detected[j][0]
                    languages[j] = token[2:-2]  # "<|en|>" -> "en"
        languages = [lang or "en" for lang in languages]
        tokenizers = [
            Tokenizer(model.hf_tokenizer, multilingual, task="transcribe", language=lang)
            for lang in languages
        ]
        prompts = [model.get_prompt(t, [], without_timestamps=True) for t in tokenizers]
        # ~3 words/s of speech is ~5 tokens/s in English; CJK scripts take more. A budget of 12/s of the
        # bucket stops runaway loops; a clip that used it all up is decoded again carefully (verify).
        # CTranslate2's Whisper generates at most max_length // 2 new tokens (Whisper's own 224-token
        # sample length at 448): ask for twice the budget.
        budget = min(token_budget(bucket - pad_s), MAX_NEW_TOKENS)
        outputs = model.model.generate(
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
