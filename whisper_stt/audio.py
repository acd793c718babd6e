"""Bytes in any container format -> float32 mono 16 kHz samples.

Decoding goes through PyAV (FFmpeg's libraries, bundled in its wheel), so no ``ffmpeg`` binary is needed.
Everything here is blocking CPU work: call it from a worker thread, never on the event loop.
"""

from __future__ import annotations

import gc
import io
from typing import BinaryIO, Optional, Union

import numpy as np

SAMPLE_RATE = 16000


class AudioDecodeError(ValueError):
    """The input is not audio we can decode. The message is safe to show to the client."""


class AudioTooLong(AudioDecodeError):
    """The audio lasts longer than the server accepts per request (a 413, not a 400)."""

    def __init__(self, limit_s: float) -> None:
        super().__init__(
            f"The audio is longer than this server accepts per request ({format_duration(limit_s)}). "
            "Split it into shorter files, or ask the operator to raise --max-audio-duration-s."
        )
        self.limit_s = limit_s


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d} min"


def decode_file(source: Union[str, bytes, BinaryIO], max_duration_s: Optional[float] = None) -> np.ndarray:
    """Decode a whole audio/video file into float32 mono 16 kHz samples in [-1, 1].

    A few kilobytes of FLAC or WAV can declare hours of audio, so the length is checked twice: against
    the duration the container declares, before decoding anything, and against the samples decoded so
    far, after every frame. Decoding stops the moment ``max_duration_s`` is passed; memory stays near
    6 bytes per accepted sample (int16 while decoding, then float32).

    Args:
        source: a path, the file's bytes, or a seekable binary file object.
        max_duration_s: refuse audio longer than this (None: no limit).

    Raises:
        AudioTooLong: the audio is longer than ``max_duration_s``.
        AudioDecodeError: empty input, not a media file, or a file without an audio stream.
    """
    import av  # heavy import, only needed where decoding happens

    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioDecodeError("The audio file is empty.")
        source = io.BytesIO(source)
    limit = int(max_duration_s * SAMPLE_RATE) if max_duration_s else None
    try:
        with av.open(source, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioDecodeError("The file contains no audio stream.")
            stream = container.streams.audio[0]
            if max_duration_s and _declared_seconds(container, stream) > max_duration_s + 1.0:
                raise AudioTooLong(max_duration_s)
            pieces = _decode_int16(container, stream, limit, max_duration_s)
    except AudioDecodeError:
        raise
    except av.error.FFmpegError as exc:
        raise AudioDecodeError(
            "Could not decode the file as audio. Send a common audio format "
            "(wav, mp3, m4a, ogg, opus, flac, webm ...)."
        ) from exc
    except (IndexError, StopIteration) as exc:
        raise AudioDecodeError("The file contains no audio stream.") from exc
    except (ValueError, OSError, RuntimeError, MemoryError) as exc:
        raise AudioDecodeError(f"Could not decode the file as audio ({type(exc).__name__}).") from exc
    finally:
        gc.collect()  # PyAV's resampler keeps buffers alive until a collection
    total = sum(len(p) for p in pieces)
    out = np.empty(total, dtype=np.float32)
    pos = 0
    pieces.reverse()
    while pieces:  # convert piece by piece, releasing each int16 piece as it is copied
        piece = pieces.pop()
        np.multiply(piece, 1.0 / 32768.0, out=out[pos:pos + len(piece)], casting="unsafe")
        pos += len(piece)
    return out


def _declared_seconds(container, stream) -> float:
    """The duration the file claims (0 when it claims none). Used only to refuse early."""
    candidates = [0.0]
    if stream.duration is not None and stream.time_base is not None:
        candidates.append(float(stream.duration * stream.time_base))
    if container.duration is not None:
        candidates.append(container.duration / 1_000_000)  # av.time_base
    return max(candidates)


def _decode_int16(container, stream, limit: Optional[int], max_duration_s: Optional[float]) -> list:
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    total = 0

    def keep(frames) -> None:
        nonlocal total
        for frame in frames:
            samples = frame.to_ndarray().reshape(-1)
            pieces.append(samples)
            total += len(samples)
            if limit is not None and total > limit:
                raise AudioTooLong(max_duration_s)

    downmix = False
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            continue  # a damaged packet: skip it, as players do, and keep the rest of the file
        for frame in frames:
            if not downmix:
                try:
                    keep(resampler.resample(frame))
                    continue
                except av.error.ArgumentError:
                    if total:
                        raise
                    # FFmpeg has no layout to downmix some channel counts (9 channels, say): mix here
                    downmix = True
                    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            keep(resampler.resample(_mono_frame(frame)))
    keep(resampler.resample(None))
    return pieces


def _mono_frame(frame):
    """The mean of a frame's channels as a mono float frame (for layouts FFmpeg cannot downmix)."""
    import av

    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    data = data.reshape(channels, -1) if frame.format.is_planar else data.reshape(-1, channels).T
    if data.dtype.kind == "u":  # unsigned 8-bit: silence is 128
        half = float(np.iinfo(data.dtype).max + 1) / 2
        data = (data.astype(np.float32) - half) / half
    elif data.dtype.kind == "i":
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    mono = data.astype(np.float32).mean(axis=0, keepdims=True)
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono), format="flt", layout="mono")
    out.sample_rate = frame.sample_rate
    return out


def pcm16_to_float32(data: bytes) -> np.ndarray:
    """Little-endian signed 16-bit PCM -> float32 in [-1, 1). ``len(data)`` must be even."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float32_to_pcm16(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> little-endian 16-bit PCM bytes (clipped)."""
    clipped = np.clip(samples, -1.0, 1.0)
    return (clipped * 32767.0).astype("<i2").tobytes()


def duration_of(samples: np.ndarray) -> float:
    return round(len(samples) / SAMPLE_RATE, 3)
