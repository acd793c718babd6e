"""audio_format auto-detection and frame reassembly (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_stt.audio import float32_to_pcm16
from whisper_stt.streaming.formats import AudioDecoder, classify, parse_format

from .speech import librivox_clips
from .ws_support import load

rng = np.random.default_rng(1234)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    clips = librivox_clips()
    if not clips:
        pytest.skip("pocketsphinx-testdata not installed")
    return load(clips[1].path)


def feed_in_pieces(decoder: AudioDecoder, data: bytes, sizes) -> np.ndarray:
    out, pos, k = [], 0, 0
    while pos < len(data):
        n = sizes[k % len(sizes)]
        out.append(decoder.feed(data[pos:pos + n]))
        pos += n
        k += 1
    out.append(decoder.flush())
    return np.concatenate(out)


def signals(speech):
    return {
        "speech": speech,
        "quiet_noise": rng.normal(0, 0.0005, 16000).astype(np.float32),  # a quiet room, ~-66 dBFS
        "loud_noise": np.clip(rng.normal(0, 0.3, 16000), -1, 1).astype(np.float32),
        "hum": (0.05 * np.sin(2 * np.pi * 50 * np.arange(16000) / 16000)).astype(np.float32),
        "positive_dc": np.full(16000, 0.01, dtype=np.float32) + rng.normal(0, 0.001, 16000).astype(np.float32),
    }


@pytest.mark.parametrize("name", ["speech", "quiet_noise", "loud_noise", "hum", "positive_dc"])
@pytest.mark.parametrize("fmt", ["float32", "pcm16"])
def test_auto_detects_format(speech, name, fmt):
    samples = signals(speech)[name]
    data = samples.astype("<f4").tobytes() if fmt == "float32" else float32_to_pcm16(samples)
    decoder = AudioDecoder("auto")
    out = feed_in_pieces(decoder, data, [3200])
    assert decoder.format == fmt
    expected = samples if fmt == "float32" else np.frombuffer(data, "<i2") / 32768.0
    assert len(out) == len(samples)
    assert np.allclose(out, expected, atol=1e-4)


@pytest.mark.parametrize("fmt", ["float32", "pcm16"])
def test_odd_frame_sizes_and_tiny_first_chunk_keep_every_sample(speech, fmt):
    samples = speech[:24000]
    data = samples.astype("<f4").tobytes() if fmt == "float32" else float32_to_pcm16(samples)
    decoder = AudioDecoder("auto")
    # 1-byte first frame, then odd sizes that never line up with the 2/4-byte sample size.
    out = feed_in_pieces(decoder, data, [1, 3, 5, 7, 999, 1001, 4095, 333])
    assert decoder.format == fmt
    assert len(out) == len(samples)
    expected = samples if fmt == "float32" else np.frombuffer(data, "<i2") / 32768.0
    assert np.allclose(out, expected, atol=1e-4)


def test_digital_silence_waits_then_detects_real_format(speech):
    decoder = AudioDecoder("auto")
    zeros = bytes(3200)
    assert len(decoder.feed(zeros)) == 0 and decoder.format is None  # undecided, nothing lost
    out = decoder.feed(speech[:8000].astype("<f4").tobytes())
    assert decoder.format == "float32"
    assert len(out) == 800 + 8000  # the silence came out at the float32 rate


def test_long_digital_silence_keeps_time_moving():
    decoder = AudioDecoder("auto")
    total = sum(len(decoder.feed(bytes(32000))) for _ in range(5))  # 5 s of pcm16 zeros
    assert decoder.format is None
    assert total >= 48000  # released as silence while undecided


def test_classify_needs_evidence():
    assert classify(b"") is None
    assert classify(b"\x01\x00\x00\x00") is None


@pytest.mark.parametrize("explicit,actual", [("float32", "pcm16"), ("pcm16", "float32")])
def test_wrong_explicit_format_does_not_crash(speech, explicit, actual):
    samples = speech[:16000]
    data = samples.astype("<f4").tobytes() if actual == "float32" else float32_to_pcm16(samples)
    decoder = AudioDecoder(explicit)
    out = feed_in_pieces(decoder, data, [777])
    assert np.all(np.isfinite(out)) and np.max(np.abs(out)) <= 1.0


def test_parse_format_aliases():
    assert parse_format(None) == "auto"
    assert parse_format("int16") == "pcm16"
    assert parse_format("FLOAT32") == "float32"
    with pytest.raises(ValueError):
        parse_format("mp3")
