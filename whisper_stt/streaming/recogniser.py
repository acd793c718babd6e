"""What the streaming core asks of a speech recogniser, and the one that uses the shared engine.

The core only needs three calls, so tests can drive it with a fake recogniser (no model) and the
protocol adapters can ask for extras (word timestamps, a prompt) without the core knowing how.
"""

from __future__ import annotations

from typing import Hashable, Optional, Protocol

import numpy as np

from ..engine import TranscriptionResult


class Recogniser(Protocol):
    async def final(self, key: Hashable, audio: np.ndarray, language: Optional[str]) -> TranscriptionResult:
        """The utterance's transcript (careful decoding). ``key`` identifies the session."""

    async def partial(
        self, key: Hashable, audio: np.ndarray, language: Optional[str]
    ) -> Optional[TranscriptionResult]:
        """A quick preview of the open utterance; ``None`` when a newer request replaced it."""

    def forget(self, key: Hashable) -> None:
        """The session is gone: drop its pending work."""


class EngineRecogniser:
    """Finals and partials through the engine's stream lane (finals first, batched across sessions).

    Finals that need word timestamps or a prompt go through faster-whisper's own decoding on the
    engine's pool instead (the stream lane's batched decoding has neither), beam search and no VAD
    (the utterance is already speech).
    """

    def __init__(self, engine, *, beam_size: Optional[int] = None, word_timestamps: bool = False,
                 prompt: Optional[str] = None) -> None:
        self.engine = engine
        self.beam_size = beam_size or engine.beam_size
        self.word_timestamps = word_timestamps
        self.prompt = prompt or None

    async def final(self, key: Hashable, audio: np.ndarray, language: Optional[str]) -> TranscriptionResult:
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
