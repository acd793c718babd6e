"""Bytes in any container format -> float32 mono 16 kHz samples.

Decoding goes through PyAV (FFmpeg's libraries, bundled in its wheel), so no ``ffmpeg`` binary is needed.
Everything here is blocking CPU work: call it from a worker thread, never on the event loop.
"""

from __future__ import annotations

import io
from typing import BinaryIO, Union

import numpy as np

SAMPLE_RATE = 16000


class AudioDecodeError(ValueError):
    """The input is not audio we can decode. The message is safe to show to the client."""


def decode_file(source: Union[str, bytes, BinaryIO]) -> np.ndarray:
    """Decode a whole audio/video file into float32 mono 16 kHz samples in [-1, 1].

    Args:
        source: a path, the file's bytes, or a seekable binary file object.

    Raises:
        AudioDecodeError: empty input, not a media file, or a file without an audio stream.
    """
    import av  # heavy import, only needed where decoding happens
    from faster_whisper.audio import decode_audio

    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioDecodeError("The audio file is empty.")
        source = io.BytesIO(source)
    try:
        samples = decode_audio(source, sampling_rate=SAMPLE_RATE)
    except av.error.FFmpegError as exc:
        raise AudioDecodeError(
            "Could not decode the file as audio. Send a common audio format "
            "(wav, mp3, m4a, ogg, opus, flac, webm ...)."
        ) from exc
    except (IndexError, StopIteration) as exc:  # no audio stream in the container
        raise AudioDecodeError("The file contains no audio stream.") from exc
    except (ValueError, OSError, RuntimeError, MemoryError) as exc:
        raise AudioDecodeError(f"Could not decode the file as audio ({type(exc).__name__}).") from exc
    return np.ascontiguousarray(samples, dtype=np.float32)


def pcm16_to_float32(data: bytes) -> np.ndarray:
    """Little-endian signed 16-bit PCM -> float32 in [-1, 1). ``len(data)`` must be even."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float32_to_pcm16(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> little-endian 16-bit PCM bytes (clipped)."""
    clipped = np.clip(samples, -1.0, 1.0)
    return (clipped * 32767.0).astype("<i2").tobytes()


def duration_of(samples: np.ndarray) -> float:
    return round(len(samples) / SAMPLE_RATE, 3)
