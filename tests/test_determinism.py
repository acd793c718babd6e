"""A clip's words do not depend on what else is in its batch (issue 9, part 2).

The stream lane batches finals and partials of different sessions, and files are decoded in batches of
chunks. Each clip is padded to a length bucket of its own length only and only clips of one bucket share
a model call, so the same audio gives exactly the same text alone and beside any neighbours.
"""

from __future__ import annotations

import numpy as np
import pytest

from whisper_stt.audio import SAMPLE_RATE, decode_file
from whisper_stt.coverage import bucket_seconds
from whisper_stt.engine import SHORT_PAD_S

from .speech import wer


@pytest.fixture(scope="module")
def clips(librivox):
    return [(decode_file(str(c.path)), c.text) for c in librivox]


def _same_bucket_as(audio: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``other`` cut or padded so that it lands in ``audio``'s bucket but is not the same length."""
    n = len(audio) - SAMPLE_RATE // 10
    out = np.zeros(n, dtype=np.float32)
    out[: min(n, len(other))] = other[:n]
    assert bucket_seconds(n / SAMPLE_RATE, SHORT_PAD_S) == bucket_seconds(len(audio) / SAMPLE_RATE, SHORT_PAD_S)
    return out


@pytest.mark.parametrize("beam_size", [5, 1])
def test_same_text_alone_and_in_any_batch(engine, clips, beam_size):
    target, reference = clips[1]
    others = [a for i, (a, _) in enumerate(clips) if i != 1]
    noise = (np.random.default_rng(0).standard_normal(len(target)) * 0.01).astype(np.float32)
    compositions = [
        [target],
        [target, others[0]],
        [others[1], target, others[2], others[3]],
        [_same_bucket_as(target, others[0]), target],  # a neighbour of the same bucket, shorter
        [_same_bucket_as(target, others[2]), target, _same_bucket_as(target, noise), others[0][: SAMPLE_RATE]],
        [target] * 3 + [others[3]] * 5,
    ]
    texts = []
    for batch in compositions:
        position = next(i for i, a in enumerate(batch) if a is target)
        results = engine._batch_blocking([(a, "en") for a in batch], beam_size)
        texts.append(results[position].text)
    assert len(set(texts)) == 1, texts
    assert wer(reference, texts[0]) < 0.3, texts[0]


def test_same_language_detection_in_any_batch(engine, clips):
    target, _ = clips[0]
    others = [a for a, _ in clips[1:]]
    alone = engine._batch_blocking([(target, None)], 1)[0]
    mixed = engine._batch_blocking([(others[0], None), (target, None), (_same_bucket_as(target, others[1]), "en")], 1)[1]
    assert (alone.text, alone.language, alone.language_probability) == (
        mixed.text, mixed.language, mixed.language_probability
    )


def test_stream_lane_final_same_alone_and_beside_other_sessions(engine, clips):
    """Through the stream lane (finals of several sessions batched together), as a stream's final is."""
    import asyncio

    target = clips[1][0]
    others = [a for a, _ in clips[2:]]

    async def final_among(neighbours):
        jobs = [engine.streams.final(object(), a, "en", 5) for a in neighbours]
        jobs.insert(len(jobs) // 2, engine.streams.final(object(), target, "en", 5))
        results = await asyncio.gather(*jobs)
        return results[len(neighbours) // 2].text

    async def main():
        return [
            await final_among([]),
            await final_among(others[:2]),
            await final_among([_same_bucket_as(target, others[0]), others[1], _same_bucket_as(target, others[2])]),
        ]

    texts = asyncio.run(main())
    assert len(set(texts)) == 1, texts
