"""Binary WebSocket frames -> float32 samples, with ``auto`` detection of float32 vs pcm16.

Clients send mono 16 kHz audio either as little-endian float32 in [-1, 1] or as signed 16-bit PCM, in
frames of any size (an odd byte count included). The decoder keeps the bytes that do not make a whole
sample for the next frame, so no sample is ever split or shifted.

How ``auto`` decides (once per connection, then locked): the bytes are read as 4-byte float32 words.
Real float32 audio gives finite values of plausible magnitude (1e-10 .. 4). PCM16 read that way is
implausible: every 4 bytes hold two samples and the second becomes the float's sign and exponent, so a
negative or loud sample makes a NaN, an infinity or a huge value, and a small positive one a value below
1e-10. Digital silence (all zero bytes) is the same in both formats, so the decision waits for non-zero
data; words that are only "tiny" wait too, and after enough of them the low halves of the words decide
(PCM16 silence has small neighbouring samples, a float's low mantissa bits look random). Input that is
still undecided after ``UNDECIDED_LIMIT`` bytes (e.g. one odd word among zeros) is taken as pcm16, and the
session tells the client so; undecided bytes never pile up beyond that.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np

from ..untrusted import echo

AudioFormat = Literal["auto", "float32", "pcm16"]
FORMAT_ALIASES = {"auto": "auto", "": "auto", "float32": "float32", "float": "float32", "f32": "float32",
                  "pcm16": "pcm16", "int16": "pcm16", "s16le": "pcm16", "pcm": "pcm16"}

_MIN_EVIDENCE_WORDS = 8  # non-zero 4-byte words needed before deciding
_TINY_WORDS_DECIDE = 4000  # ~0.25-0.5 s of only-tiny words: decide on the low halves
_ZERO_FLUSH_BYTES = 64000  # undecided digital silence: release it as samples after ~2 s (pcm16)
# Undecided audio that is not all zeros: after this many bytes (2 s of pcm16, 1 s of float32) ``auto``
# settles on pcm16 instead of buffering without bound.
UNDECIDED_LIMIT = 64000
_PLAUSIBLE_MAX = 4.0
_TINY = 1e-10


def parse_format(name: Optional[str]) -> AudioFormat:
    """Client value -> canonical format; raises ValueError with a message for unknown names."""
    key = (name or "auto").strip().lower()
    if key not in FORMAT_ALIASES:
        raise ValueError(f"Unknown audio_format {echo(name)}: use auto, float32 or pcm16 (int16).")
    return FORMAT_ALIASES[key]  # type: ignore[return-value]


class _Evidence:
    """Running counts over 4-byte words read as float32; each word is looked at once."""

    def __init__(self) -> None:
        self.nonzero = 0
        self.bad = 0  # NaN, infinite or implausibly large as float32
        self.plausible = 0
        self.small_low = 0  # words whose low 16 bits, read as int16, are small

    def add(self, words: np.ndarray) -> None:
        words = words[words != 0]
        if len(words) == 0:
            return
        with np.errstate(all="ignore"):
            values = words.view("<f4")
            magnitude = np.abs(values)
            bad = ~np.isfinite(values) | (magnitude > _PLAUSIBLE_MAX)
        self.nonzero += len(words)
        self.bad += int(bad.sum())
        self.plausible += int((~bad & (magnitude >= _TINY)).sum())
        low = (words & 0xFFFF).astype(np.uint16).view("<i2").astype(np.int32)
        self.small_low += int((np.abs(low) < 4096).sum())

    def decide(self) -> Optional[str]:
        count = self.nonzero
        if count < _MIN_EVIDENCE_WORDS:
            return None
        if self.bad > max(1, 0.02 * count):
            return "pcm16"
        if self.plausible >= _MIN_EVIDENCE_WORDS and self.plausible >= 0.9 * (self.plausible + self.bad):
            # Only trust it when the tiny words are not the majority (quiet positive PCM16 looks tiny).
            if self.plausible >= 0.5 * count:
                return "float32"
        if count >= _TINY_WORDS_DECIDE:
            return "pcm16" if self.small_low / count > 0.6 else "float32"
        return None


def classify(data: bytes) -> Optional[str]:
    """Guess the format of 4-byte-aligned bytes: 'float32', 'pcm16' or None (not enough evidence)."""
    evidence = _Evidence()
    evidence.add(np.frombuffer(data, dtype="<u4", count=len(data) // 4))
    return evidence.decide()


class AudioDecoder:
    """Stateful bytes -> float32 converter for one stream.

    Args:
        audio_format: 'auto', 'float32' or 'pcm16'.
    """

    def __init__(self, audio_format: AudioFormat = "auto") -> None:
        self.requested: AudioFormat = audio_format
        self.format: Optional[str] = None if audio_format == "auto" else audio_format
        self.fell_back = False  # auto could not decide within UNDECIDED_LIMIT bytes and assumed pcm16
        self._pending = bytearray()  # undecided bytes (auto) or the partial sample at the end
        self._evidence = _Evidence()
        self._scanned = 0  # undecided bytes already counted in the evidence
        self.bytes_in = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes received but not yet returned as samples (undecided audio, a partial sample)."""
        return len(self._pending)

    @property
    def detected(self) -> bool:
        return self.format is not None

    def feed(self, data: bytes) -> np.ndarray:
        """Add a frame; return the whole samples it completes (possibly none)."""
        self.bytes_in += len(data)
        self._pending += data
        if self.format is None:
            aligned = len(self._pending) - len(self._pending) % 4
            if aligned > self._scanned:  # only the new words: no per-frame pass over the whole buffer
                self._evidence.add(np.frombuffer(self._pending, dtype="<u4", count=(aligned - self._scanned) // 4,
                                                 offset=self._scanned).copy())
                self._scanned = aligned
            guess = self._evidence.decide()
            if guess is None:
                if self._evidence.nonzero == 0:
                    return self._release_undecided_silence()
                if len(self._pending) < UNDECIDED_LIMIT:
                    return np.zeros(0, dtype=np.float32)
                guess, self.fell_back = "pcm16", True  # bounded: the documented default for such input
            self.format = guess
        return self._convert()

    def flush(self) -> np.ndarray:
        """End of stream: decide with what we have and return every remaining whole sample."""
        if self.format is None:
            if not any(self._pending):
                out = np.zeros(len(self._pending) // 2, dtype=np.float32)
                del self._pending[: len(out) * 2]
                return out
            self.format = "pcm16"
        return self._convert()

    def reset(self) -> None:
        """Drop a partial sample (``clear``); the detected format stays."""
        self._pending.clear()
        self._scanned = 0

    def _release_undecided_silence(self) -> np.ndarray:
        # Zero bytes are silence in either format; hand them on so endpointing time keeps moving.
        if len(self._pending) < _ZERO_FLUSH_BYTES:
            return np.zeros(0, dtype=np.float32)
        cut = len(self._pending) - len(self._pending) % 4
        del self._pending[:cut]
        self._scanned = 0
        return np.zeros(cut // 2, dtype=np.float32)

    def _convert(self) -> np.ndarray:
        size = 4 if self.format == "float32" else 2
        usable = len(self._pending) - len(self._pending) % size
        if usable == 0:
            return np.zeros(0, dtype=np.float32)
        raw = bytes(self._pending[:usable])
        del self._pending[:usable]
        if self.format == "float32":
            samples = np.frombuffer(raw, dtype="<f4").astype(np.float32)
            # A client that said float32 but sends pcm16 produces NaN/huge values: keep the session alive.
            samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
            np.clip(samples, -1.0, 1.0, out=samples)
            return samples
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
