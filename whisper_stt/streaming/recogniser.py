"""What the streaming core asks of a speech recogniser, and the one that uses the shared engine.

The core only needs three calls, so tests can drive it with a fake recogniser (no model) and the
protocol adapters can ask for extras (word timestamps, a prompt) without the core knowing how.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Hashable, Optional, Protocol

import numpy as np

from ..audio import SAMPLE_RATE
from ..engine import TranscriptionResult, Word


class Recogniser(Protocol):
    async def final(self, key: Hashable, audio: np.ndarray, language: Optional[str]) -> TranscriptionResult:
        """The utterance's transcript (careful decoding). ``key`` identifies the session."""

    async def partial(
        self, key: Hashable, audio: np.ndarray, language: Optional[str]
    ) -> Optional[TranscriptionResult]:
        """A quick preview of the open utterance; ``None`` when a newer request replaced it."""

    def forget(self, key: Hashable) -> None:
        """The session is gone: drop its pending work."""


ALIGN_PAD_S = 2.0  # silence after the clip, as the stream lane pads its short windows
_PREPEND = "\"'“¿([{-"  # faster-whisper's defaults: punctuation joined to the next / previous word
_APPEND = "\"'.。,，!！?？:：”)]}、"


def align_words(model, audio: np.ndarray, result: TranscriptionResult) -> TranscriptionResult:
    """Word timings for a transcript already decoded: one encoder pass over the clip's own length and
    Whisper's cross-attention alignment of the text (what faster-whisper's ``word_timestamps`` does after
    decoding), instead of decoding again through a padded 30 s window. Blocking: run it off the loop."""
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import merge_punctuations

    text = result.text.strip()
    if not text or not result.segments:
        return result
    padded = np.concatenate([audio.astype(np.float32), np.zeros(int(ALIGN_PAD_S * SAMPLE_RATE), np.float32)])
    mel = model.feature_extractor(padded, padding=0)
    encoded = model.encode(mel.astype(np.float32, copy=False))  # WhisperModel's: multi-GPU safe
    tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe",
                          language=result.language or "en")
    duration = len(audio) / SAMPLE_RATE
    tokens = tokenizer.encode(" " + " ".join(seg.text.strip() for seg in result.segments))
    alignment = model.find_alignment(tokenizer, [tokens], encoded, len(audio) // 160)[0]
    merge_punctuations(alignment, _PREPEND, _APPEND)
    words = [Word(round(min(float(a["start"]), duration), 3), round(min(float(a["end"]), duration), 3),
                  a["word"], round(float(a["probability"]), 4))
             for a in alignment if a["word"].strip()]
    # The lane's finals are one segment per clip; several (a long clip) keep their words on the first.
    segments = [replace(seg, words=words if i == 0 else []) for i, seg in enumerate(result.segments)]
    return replace(result, segments=segments)


class EngineRecogniser:
    """Finals and partials through the engine's stream lane (finals first, batched across sessions).

    Word timestamps: the lane's final, then :func:`align_words` on the engine's decode threads (a
    fraction of a decoding). Finals with a prompt go through faster-whisper's own decoding on the
    engine's pool instead (the lane's batched decoding has no prompt), beam search and no VAD (the
    utterance is already speech).
    """

    def __init__(self, engine, *, beam_size: Optional[int] = None, word_timestamps: bool = False,
                 prompt: Optional[str] = None) -> None:
        self.engine = engine
        self.beam_size = beam_size or engine.beam_size
        self.word_timestamps = word_timestamps
        self.prompt = prompt or None

    async def final(self, key: Hashable, audio: np.ndarray, language: Optional[str]) -> TranscriptionResult:
        if self.word_timestamps and not self.prompt and len(audio) / SAMPLE_RATE + ALIGN_PAD_S < 29.0:
            result = await self.engine.streams.final(key, audio, language, self.beam_size)
            return await self.engine.run_decode(align_words, self.engine.model, audio, result)
        if self.word_timestamps or self.prompt:
            options = {"condition_on_previous_text": False}
            if self.word_timestamps:
                options["word_timestamps"] = True
            if self.prompt:
                options["initial_prompt"] = self.prompt
            return await self.engine.transcribe(audio, language, beam_size=self.beam_size, vad_filter=False,
                                                **options)
        return await self.engine.streams.final(key, audio, language, self.beam_size)

    async def partial(self, key: Hashable, audio: np.ndarray, language: Optional[str]):
        return await self.engine.streams.partial(key, audio, language)

    def forget(self, key: Hashable) -> None:
        self.engine.streams.forget(key)
