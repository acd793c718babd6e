"""Every WebSocket message in and out of ``/ws/transcribe``, as typed definitions.

The field names and message types of the original server are the API; fields added here are extras a
client of the original can ignore. Extras (all optional to read):

``partial``
    ``utterance_id`` (int, counts from 1 per connection), ``stable_text`` (the leading words that have
    stopped changing: later partials of the same utterance keep them), ``unstable_text`` (the rest, may
    still change; ``text`` == ``stable_text`` + ``unstable_text`` joined), ``start`` / ``end`` (seconds
    of stream audio the utterance spans so far), ``language_probability``.
``final``
    ``utterance_id``, ``start`` / ``end`` (stream seconds), ``duration`` (seconds of audio transcribed),
    ``segments`` (times relative to the stream), ``language_probability``, ``reason``: ``silence`` (the
    speaker paused for ``silence_threshold``), ``max_length`` (a long monologue committed at a natural
    pause, the speaker goes on), ``stop`` (flushed by ``stop``).
``status``
    ``state`` (``started``/``stopped``/``cleared``/``receiving_file``/``transcribing_file``, and
    ``format_detected`` when ``auto`` could not decide and settled on pcm16) and for
    ``start`` the effective ``language``, ``audio_format``, ``silence_threshold`` after clamping.
``error``
    ``code`` (e.g. ``AUTH_FAILED``, ``BAD_MESSAGE``, ``UNKNOWN_COMMAND``, ``NOT_STARTED``,
    ``FILE_TOO_LARGE``, ``AUDIO_TOO_LONG``, ``EMPTY_FILE``, ``DECODE_ERROR``, ``BUFFER_FULL``, ``IDLE_TIMEOUT``).
``pong``
    answer to the extra ``{"command": "ping"}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from ..untrusted import InvalidJSON, echo, parse_json
from . import events

SILENCE_MIN_S = 0.2
SILENCE_MAX_S = 10.0
SILENCE_DEFAULT_S = 2.0


class ProtocolError(ValueError):
    """A client message we cannot use. ``code`` and the message go back in an ``error`` message."""

    def __init__(self, message: str, code: str = "BAD_MESSAGE") -> None:
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------------------------
# client -> server
class _Command(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients of the original may send fields we do not use


class AuthMessage(BaseModel):
    """First message when auth is on."""

    model_config = ConfigDict(extra="ignore")
    api_key: str = Field(min_length=1)


class StartCommand(_Command):
    command: Literal["start"]
    language: Optional[str] = Field(None, description="'' / absent / 'auto' = detect per utterance.")
    audio_format: str = Field("auto", description="auto | float32 | pcm16 (alias int16).")
    silence_threshold: float = Field(
        SILENCE_DEFAULT_S, description="Seconds of non-speech that end an utterance; clamped to 0.2-10."
    )
    word_timestamps: bool = Field(False, description="Finals carry ``words`` with stream times.")

    @field_validator("silence_threshold", mode="before")
    @classmethod
    def _default_when_null(cls, value: Any) -> Any:
        return SILENCE_DEFAULT_S if value is None else value

    @field_validator("silence_threshold")
    @classmethod
    def _clamp(cls, value: float) -> float:
        if value != value:  # NaN
            return SILENCE_DEFAULT_S
        return min(max(float(value), SILENCE_MIN_S), SILENCE_MAX_S)

    @field_validator("audio_format", mode="before")
    @classmethod
    def _format_default(cls, value: Any) -> Any:
        return "auto" if value is None else value


class StopCommand(_Command):
    command: Literal["stop"]


class ClearCommand(_Command):
    command: Literal["clear"]


class TranscribeFileCommand(_Command):
    command: Literal["transcribe_file"]
    language: Optional[str] = None


class TranscribeFileEndCommand(_Command):
    command: Literal["transcribe_file_end"]


class PingCommand(_Command):
    command: Literal["ping"]


Command = Annotated[
    Union[StartCommand, StopCommand, ClearCommand, TranscribeFileCommand, TranscribeFileEndCommand, PingCommand],
    Field(discriminator="command"),
]
_COMMAND = TypeAdapter(Command)
COMMANDS = ("start", "stop", "clear", "transcribe_file", "transcribe_file_end", "ping")


def _load_object(text: str) -> dict:
    try:
        data = parse_json(text)
    except InvalidJSON as exc:
        raise ProtocolError(f"Messages must be JSON objects; this is {exc}.") from None
    if not isinstance(data, dict):
        raise ProtocolError('Messages must be JSON objects like {"command": "start"}.')
    return data


def parse_command(text: str):
    """Text frame -> one of the command models; ProtocolError says what is wrong."""
    data = _load_object(text)
    name = data.get("command")
    if name is None:
        raise ProtocolError(f"Missing 'command'. Known commands: {', '.join(COMMANDS)}.")
    if name not in COMMANDS:
        raise ProtocolError(
            f"Unknown command {echo(name)}. Known commands: {', '.join(COMMANDS)}.", code="UNKNOWN_COMMAND"
        )
    try:
        return _COMMAND.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or 'command'}: {err['msg']}" for err in exc.errors()
        )
        raise ProtocolError(f"Invalid '{name}' command: {problems}") from None


def parse_auth(text: str) -> AuthMessage:
    data = _load_object(text)
    try:
        return AuthMessage.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError('The first message must be {"api_key": "sk-..."}.') from exc


# ----------------------------------------------------------------------------------------------
# server -> client
class _Out(BaseModel):
    def dump(self) -> dict:
        return self.model_dump(exclude_none=True)


class AuthResult(_Out):
    type: Literal["auth"] = "auth"
    status: Literal["success"] = "success"
    message: str = "Authenticated."


class Connected(_Out):
    type: Literal["connected"] = "connected"
    message: str
    model: str
    device: str
    server_load: str


class Status(_Out):
    type: Literal["status"] = "status"
    message: str
    state: Optional[str] = None
    language: Optional[str] = None
    audio_format: Optional[str] = None
    silence_threshold: Optional[float] = None


class ErrorMessage(_Out):
    type: Literal["error"] = "error"
    message: str
    code: Optional[str] = None


class SegmentOut(BaseModel):
    start: float
    end: float
    text: str
    confidence: float


class WordOut(BaseModel):
    word: str
    start: float
    end: float
    probability: float


class Partial(_Out):
    type: Literal["partial"] = "partial"
    text: str
    language: str
    duration: float
    utterance_id: int
    stable_text: str
    unstable_text: str
    start: float
    end: float
    language_probability: Optional[float] = None


class Final(_Out):
    type: Literal["final"] = "final"
    text: str
    language: str
    utterance_id: int
    start: float
    end: float
    duration: float
    reason: Literal["silence", "max_length", "stop"]
    segments: list[SegmentOut] = []
    language_probability: Optional[float] = None
    words: Optional[list[WordOut]] = None  # with ``word_timestamps: true`` in ``start``


class FileResult(_Out):
    type: Literal["file_result"] = "file_result"
    text: str
    language: str
    duration: float
    segments: list[SegmentOut]
    language_probability: Optional[float] = None
    processing_time: Optional[float] = None


class Pong(_Out):
    type: Literal["pong"] = "pong"


OutMessage = Union[AuthResult, Connected, Status, ErrorMessage, Partial, Final, FileResult, Pong]


def from_event(event: events.Event) -> Optional[_Out]:
    """The streaming core's event as this protocol's message (None: nothing to send)."""
    if isinstance(event, events.PartialText):
        return Partial(
            text=event.text, language=event.language, duration=event.duration, utterance_id=event.utterance_id,
            stable_text=" ".join(event.stable), unstable_text=" ".join(event.unstable),
            start=event.start, end=event.end, language_probability=event.language_probability,
        )
    if isinstance(event, events.FinalText):
        if not event.text:  # noise: the original sends nothing
            return None
        return Final(
            text=event.text, language=event.language, utterance_id=event.utterance_id, start=event.start,
            end=event.end, duration=event.duration, reason=event.reason,  # type: ignore[arg-type]
            segments=[SegmentOut(start=s.start, end=s.end, text=s.text, confidence=s.confidence)
                      for s in event.segments],
            language_probability=event.language_probability,
            words=None if event.words is None else [
                WordOut(word=w.word, start=w.start, end=w.end, probability=w.probability) for w in event.words
            ],
        )
    if isinstance(event, events.Notice):
        return Status(message=event.message, state=event.state, audio_format=event.audio_format)
    if isinstance(event, events.Problem):
        return ErrorMessage(code=event.code, message=event.message)
    if isinstance(event, events.Failed):
        return ErrorMessage(code="TRANSCRIPTION_FAILED", message=event.message)
    return None  # speech started / stopped, committed: not part of this protocol
