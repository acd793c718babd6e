"""What the engine returns: transcription results, their segments and words, and the fast decoder's flags."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

BROKEN_CHAR = "\ufffd"  # what a token sequence cut inside a multi-byte UTF-8 character decodes to


class UnsupportedLanguageError(ValueError):
    """The client asked for a language code the model does not know."""


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass
class Segment:
    start: float
    end: float
    text: str
    confidence: float  # the segment's average token log-probability, as in the original
    no_speech_prob: float = 0.0
    words: Optional[list[Word]] = None  # only when transcribed with word_timestamps=True
    temperature: float = 0.0
    compression_ratio: float = 0.0

    def to_public(self) -> dict:
        return {"start": self.start, "end": self.end, "text": self.text, "confidence": self.confidence}


@dataclass
class TranscriptionResult:
    text: str
    language: str
    language_probability: float
    duration: float  # seconds of audio
    segments: list[Segment] = field(default_factory=list)
    processing_time: float = 0.0  # seconds spent in the model call

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DecodeFlags:
    """What the fast decoder did to a clip's text besides decoding it."""

    truncated: bool = False  # the token budget ran out: the text may end early
    looped: bool = False  # a repeated tail was cut off
    broken: bool = False  # an invalid character (half of a multi-byte one) is in the text
