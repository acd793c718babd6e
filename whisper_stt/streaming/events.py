"""What the streaming core tells a protocol adapter: plain dataclasses, no wire format.

The core (``session.StreamingSession``) turns audio into these events; each wire protocol
(``/ws/transcribe``, OpenAI Realtime, Deepgram live) is an adapter that maps them onto its own messages.
Times are seconds of stream audio (16 kHz samples received since the session started).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union


@dataclass
class WordTime:
    word: str
    start: float
    end: float
    probability: float


@dataclass
class SegmentTime:
    start: float
    end: float
    text: str
    confidence: float


@dataclass
class SpeechStarted:
    """Endpointing opened an utterance (VAD mode only). ``start`` includes the pre-roll."""

    utterance_id: int
    start: float


@dataclass
class SpeechStopped:
    """Endpointing closed the utterance (silence, a monologue cut, stop/commit); its final follows."""

    utterance_id: int
    end: float
    reason: str


@dataclass
class Committed:
    """The utterance's audio is fixed; its transcription is under way (every utterance gets one)."""

    utterance_id: int
    start: float
    end: float


@dataclass
class PartialText:
    """A preview of the open utterance.

    ``stable`` words never change again within the utterance; ``delta`` is the text that became stable
    since the previous event of this utterance (append-only: all deltas of an utterance, concatenated,
    are a prefix of its ``FinalText.item_text``).
    """

    utterance_id: int
    stable: list[str]
    unstable: list[str]
    delta: str
    language: str
    language_probability: Optional[float]
    start: float
    end: float

    @property
    def text(self) -> str:
        return " ".join(self.stable + self.unstable)

    @property
    def duration(self) -> float:
        return round(self.end - self.start, 3)


@dataclass
class FinalText:
    """The utterance's transcript (``text`` may be empty: noise, or nothing recognisable).

    ``text`` is the final decoding as is. ``item_text`` is what delta-based protocols report as the
    utterance's transcript: the deltas already sent plus ``delta``, the rest of the final decoding after
    the part those deltas covered, so deltas always add up to it.
    """

    utterance_id: int
    text: str
    language: str
    language_probability: Optional[float]
    start: float
    end: float
    reason: str  # silence | max_length | stop | commit
    segments: list[SegmentTime] = field(default_factory=list)
    words: Optional[list[WordTime]] = None  # when the session asked for word timestamps
    delta: str = ""
    item_text: str = ""

    @property
    def duration(self) -> float:
        return round(self.end - self.start, 3)


@dataclass
class Failed:
    """Transcribing an utterance failed (a model error); the session goes on."""

    utterance_id: Optional[int]
    message: str


@dataclass
class Notice:
    """A state change: ``stopped``, ``cleared``, ``format_detected``."""

    state: str
    message: str
    audio_format: Optional[str] = None


@dataclass
class Problem:
    """Something about the client's input: ``BUFFER_FULL``, ``COMMIT_EMPTY``."""

    code: str
    message: str


Event = Union[SpeechStarted, SpeechStopped, Committed, PartialText, FinalText, Failed, Notice, Problem]
