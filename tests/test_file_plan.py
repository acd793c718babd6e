"""How a file's chunks are batched (engine/chunked.py), without the model: which chunks the language is
judged on, which buckets they are padded to, and that the plan depends on the file's chunk lengths only."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_stt.audio import SAMPLE_RATE
from whisper_stt.coverage import bucket_seconds
from whisper_stt.engine import Segment, TranscriptionResult
from whisper_stt.engine.chunked import (
    _unpad, combine_languages, detection_count, merge_buckets, padded_to, plan,
)
from whisper_stt.engine.window import SHORT_MAX_S, SHORT_PAD_S

MINUTE = [10.8, 12.2, 14.7, 12.2, 3.6]  # bench_rest's LibriVox minute, as the VAD cuts it
SPARSE = [2.0, 3.0, 14.0, 2.5, 9, 9, 9, 9, 9, 9, 9, 4, 4, 4]


@pytest.mark.parametrize("lengths", [MINUTE, SPARSE, [7.1], [1.0] * 20, [27.0, 0.5, 26.0]])
@pytest.mark.parametrize("detect", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_every_chunk_once_in_batches_no_larger_than_asked(lengths, detect, batch_size):
    batches = plan(lengths, 5, batch_size, detect)
    seen = sorted(i for batch in batches for i, _ in batch)
    assert seen == list(range(len(lengths)))
    assert all(1 <= len(batch) <= batch_size for batch in batches)
    for batch in batches:
        for i, bucket in batch:
            assert bucket >= bucket_seconds(lengths[i], SHORT_PAD_S)  # padded up, never cut


def test_language_judged_on_the_first_30_s_of_speech_in_one_bucket():
    assert detection_count(MINUTE, 8) == 3  # the third chunk starts at 23 s of speech
    assert detection_count([7.1], 8) == 1
    assert detection_count([5.0] * 4, 8) == 4  # a file with under 30 s of speech is judged on all of it
    assert detection_count([1.0] * 20, 8) == 8  # at most one batch
    first = plan(MINUTE, 5, 8, detect=True)[0]
    judged = [bucket for i, bucket in first if i < 3]
    assert [i for i, _ in first][:3] == [0, 1, 2] and len(set(judged)) == 1
    assert judged[0] == max(bucket_seconds(s, SHORT_PAD_S) for s in MINUTE[:3])


def test_the_first_batch_is_filled_with_chunks_of_the_nearest_buckets():
    first = plan(MINUTE, 5, 8, detect=True)[0]
    assert dict(first)[3] == 17.0  # 12.2 s: the judged chunks' bucket, one decoder call for the four
    assert len(plan(MINUTE, 5, 8, detect=True)) == 1


def test_near_buckets_share_a_call_far_ones_do_not():
    assert merge_buckets([10.8, 12.2, 14.7, 12.2], 5) == [17.0] * 4  # 14 s bucket padded up to 17
    assert merge_buckets([3.6, 14.7, 14.7, 14.7], 5)[0] == 6.0  # 11 s of padding would cost more
    assert merge_buckets([4.0, 4.2], 5) == [7.0, 7.0]
    assert merge_buckets([5.0], 5, floors=[17.0]) == [17.0]


def test_plan_depends_on_the_lengths_only():
    assert plan(SPARSE, 5, 8, True) == plan(list(SPARSE), 5, 8, True)
    # ordering by bucket: a batch of the rest holds chunks of neighbouring buckets
    rest = plan(SPARSE, 5, 8, detect=False)
    assert [i for i, _ in rest[0]] == [0, 1, 3, 11, 12, 13, 4, 5]


@pytest.mark.parametrize("seconds,bucket", [(3.0, 5.0), (3.0, 17.0), (10.8, 17.0), (26.0, 30.0), (7.0, 10.0)])
def test_padding_puts_the_clip_in_the_bucket_asked_and_keeps_it_in_one_window(seconds, bucket):
    audio = np.linspace(-0.5, 0.5, int(seconds * SAMPLE_RATE)).astype(np.float32)
    out = padded_to(audio, bucket)
    assert bucket_seconds(len(out) / SAMPLE_RATE, SHORT_PAD_S) == bucket
    assert len(out) / SAMPLE_RATE + SHORT_PAD_S <= SHORT_MAX_S  # still the short window, not the long path
    assert np.array_equal(out[: len(audio)], audio) and not out[len(audio):].any()


def test_a_padded_result_gets_its_own_length_back():
    r = TranscriptionResult("hello", "en", 1.0, 15.0, [Segment(0.0, 15.0, "hello", -0.2)])
    _unpad(r, 3.2)
    assert r.duration == 3.2 and r.segments[0].end == 3.2


def test_languages_of_several_clips_are_combined_by_weight():
    detected = [[("<|en|>", 0.6), ("<|cy|>", 0.4)], [("<|cy|>", 0.9), ("<|en|>", 0.1)]]
    ranked = combine_languages(detected, [9.0, 1.0])
    assert ranked[0][0] == "<|en|>" and ranked[0][1] == pytest.approx(0.55)
    assert combine_languages(detected, [1.0, 3.0])[0][0] == "<|cy|>"
    assert sum(p for _, p in ranked) == pytest.approx(1.0)
