"""How a file's chunks are batched (engine/chunked.py), without the model: which chunks the language is
judged on, how chunks are ordered into batches, and that the plan depends on the file's chunk lengths only."""

from __future__ import annotations

import pytest

from whisper_stt.coverage import bucket_seconds
from whisper_stt.engine.chunked import bucket_groups, combine_languages, detection_count, plan
from whisper_stt.engine.window import SHORT_PAD_S

MINUTE = [10.8, 12.2, 14.7, 12.2, 3.6]  # bench_rest's LibriVox minute, as the VAD cuts it
SPARSE = [2.0, 3.0, 14.0, 2.5, 9, 9, 9, 9, 9, 9, 9, 4, 4, 4]


@pytest.mark.parametrize("lengths", [MINUTE, SPARSE, [7.1], [1.0] * 20, [27.0, 0.5, 26.0]])
@pytest.mark.parametrize("detect", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_every_chunk_once_in_batches_no_larger_than_asked(lengths, detect, batch_size):
    batches = plan(lengths, batch_size, detect)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert all(1 <= len(batch) <= batch_size for batch in batches)


def test_language_judged_on_the_first_30_s_of_speech():
    assert detection_count(MINUTE, 8) == 3  # the third chunk starts at 23 s of speech
    assert detection_count([7.1], 8) == 1
    assert detection_count([5.0] * 4, 8) == 4  # a file with under 30 s of speech is judged on all of it
    assert detection_count([1.0] * 20, 8) == 8  # at most one batch
    assert plan(MINUTE, 8, detect=True)[0][:3] == [0, 1, 2]


def test_the_first_batch_is_filled_with_chunks_of_the_judged_buckets():
    # 12.2 s shares the 17 s bucket of chunks 1 and 2 (the same decoder call); 3.6 s would need a call of its own
    assert plan(MINUTE, 8, detect=True) == [[0, 1, 2, 3], [4]]
    assert plan(MINUTE, 8, detect=False) == [[4, 0, 1, 2, 3]]  # buckets 6, 14, 17, 17, 17


def test_other_chunks_are_batched_by_bucket():
    batches = plan(SPARSE, 8, detect=False)
    assert batches == [[0, 1, 3, 11, 12, 13, 4, 5], [6, 7, 8, 9, 10, 2]]
    buckets = [[bucket_seconds(SPARSE[i], SHORT_PAD_S) for i in b] for b in batches]
    assert buckets == [sorted(b) for b in buckets]
    assert plan(SPARSE, 8, True) == plan(list(SPARSE), 8, True)  # the lengths decide, nothing else


def test_groups_are_the_short_windows_buckets_in_batch_order():
    assert bucket_groups([3.0, 12.2, 2.9, 14.7, 28.0]) == {5.0: [0, 2], 17.0: [1, 3]}  # 28 s: normal path


def test_languages_of_several_clips_are_combined_by_weight():
    detected = [[("<|en|>", 0.6), ("<|cy|>", 0.4)], [("<|cy|>", 0.9), ("<|en|>", 0.1)]]
    ranked = combine_languages(detected, [9.0, 1.0])
    assert ranked[0][0] == "<|en|>" and ranked[0][1] == pytest.approx(0.55)
    assert combine_languages(detected, [1.0, 3.0])[0][0] == "<|cy|>"
    assert sum(p for _, p in ranked) == pytest.approx(1.0)
