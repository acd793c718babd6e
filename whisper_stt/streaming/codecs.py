"""Telephony and other-rate audio -> float32 16 kHz mono, for the OpenAI Realtime and Deepgram adapters.

* G.711 μ-law and A-law are expanded with 256-entry tables computed here from the ITU-T G.711 rules
  (``audioop`` is gone from Python 3.13).
* Little-endian 16-bit PCM keeps an odd trailing byte for the next frame, like ``formats.AudioDecoder``.
* Any other sample rate goes through soxr's streaming resampler (band-limited, high quality; its state is
  carried across frames so chunk boundaries leave no clicks). Dropping or repeating samples would alias.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np

from ..audio import SAMPLE_RATE

Encoding = Literal["pcm16", "mulaw", "alaw"]


def _ulaw_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF  # μ-law bytes are stored inverted
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    values = np.where(sign != 0, -magnitude, magnitude)
    return (values / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int32) ^ 0x55  # even bits are inverted on the wire
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    values = np.where(sign != 0, magnitude, -magnitude)
    return (values / 32768.0).astype(np.float32)


ULAW = _ulaw_table()
ALAW = _alaw_table()


def encode_ulaw(samples: np.ndarray) -> bytes:
    """float32 -> μ-law bytes (nearest table entry); for tests and benchmarks that play a phone."""
    return _encode_with(ULAW, samples)


def encode_alaw(samples: np.ndarray) -> bytes:
    return _encode_with(ALAW, samples)


def _encode_with(table: np.ndarray, samples: np.ndarray) -> bytes:
    order = np.argsort(table)
    sorted_values = table[order]
    x = np.clip(samples.astype(np.float32), -1.0, 1.0)
    idx = np.clip(np.searchsorted(sorted_values, x), 1, 255)
    left, right = sorted_values[idx - 1], sorted_values[idx]
    nearest = np.where(np.abs(x - left) <= np.abs(right - x), idx - 1, idx)
    return order[nearest].astype(np.uint8).tobytes()


MIN_RATE, MAX_RATE = 8000, 48000  # what a streaming client may declare (every protocol checks it first)


class Resampler:
    """Streaming resampler to 16 kHz (soxr, high quality); identity at 16 kHz.

    Only rates in MIN_RATE-MAX_RATE: audio declared at 1 Hz would be upsampled 16000x (gigabytes from one
    frame, on the event loop), so anything else is refused here too, whatever a protocol forgot to check.
    """

    def __init__(self, rate: int) -> None:
        if not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
            raise ValueError(f"unsupported sample rate {rate!r}: {MIN_RATE}-{MAX_RATE} Hz")
        self.rate = rate
        self._stream = None
        if rate != SAMPLE_RATE:
            import soxr

            self._stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def __call__(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples.astype(np.float32, copy=False), last=last)

    def reset(self) -> None:
        if self._stream is not None:
            self._stream.clear()


class PCMStream:
    """Bytes of one encoding at one rate -> float32 16 kHz, frame by frame.

    Args:
        encoding: ``pcm16`` (signed little-endian), ``mulaw`` or ``alaw``.
        rate: the client's sample rate (8000 ... 48000).
    """

    def __init__(self, encoding: Encoding, rate: int) -> None:
        self.encoding = encoding
        self.rate = rate
        self._resample = Resampler(rate)
        self._rest = b""

    @property
    def pending_bytes(self) -> int:
        return len(self._rest)

    def decode(self, data: bytes) -> np.ndarray:
        """Samples at the client's rate, before resampling."""
        if self.encoding == "mulaw":
            return ULAW[np.frombuffer(data, dtype=np.uint8)]
        if self.encoding == "alaw":
            return ALAW[np.frombuffer(data, dtype=np.uint8)]
        data = self._rest + data
        usable = len(data) - len(data) % 2
        self._rest = data[usable:]
        return np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0

    def feed(self, data: bytes) -> np.ndarray:
        return self._resample(self.decode(data))

    def flush(self) -> np.ndarray:
        """The resampler's tail (end of stream or an explicit commit)."""
        self._rest = b""
        return self._resample(np.zeros(0, dtype=np.float32), last=True)

    def reset(self) -> None:
        self._rest = b""
        self._resample = Resampler(self.rate)


def resample(samples: np.ndarray, rate: int, to: Optional[int] = None) -> np.ndarray:
    """Whole-signal resampling (tests and benchmarks that prepare 24 kHz / 8 kHz input)."""
    import soxr

    target = to or SAMPLE_RATE
    if rate == target:
        return samples.astype(np.float32)
    return soxr.resample(samples.astype(np.float32), rate, target, quality="HQ").astype(np.float32)
