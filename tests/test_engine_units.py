"""The engine's pure parts, without the model: span merging, fallback decisions, loop rules, the token
budget, device choice and the GPU lane plan (settings, spreading of sessions and files over lanes)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from whisper_stt.audio import SAMPLE_RATE
from whisper_stt.config import Settings
from whisper_stt.engine import (
    DecodeFlags, Engine, Segment, TranscriptionResult, _drop_repeated_tail, _merge_spans, _without_loops,
    choose_device, collapse_loop, compression_ratio, fallback_reason, join_texts, token_budget,
)
from whisper_stt.engine.careful import keep_fast
from whisper_stt.engine.device import DeviceChoice
from whisper_stt.engine.lanes import (
    DeviceIndexError, StreamLanes, least_loaded, parse_device_index, plan_lanes,
)
from whisper_stt.engine.window import MAX_NEW_TOKENS
from whisper_stt.models import ModelError

S = SAMPLE_RATE


def result(text: str, confidence: float = -0.3, compression: float = 1.2, language: str = "en"):
    segs = [Segment(0.0, 10.0, text, confidence, 0.01, compression_ratio=compression)] if text else []
    return TranscriptionResult(text, language, 1.0, 10.0, segs)


# --- span merging ---------------------------------------------------------------------------------
def test_spans_closer_than_the_gap_merge_while_the_chunk_stays_short():
    spans = [(0, 2 * S), (int(2.3 * S), 5 * S), (6 * S, 8 * S)]  # gaps 0.3 s, then 1 s
    assert _merge_spans(spans, 15 * S) == [(0, 5 * S), (6 * S, 8 * S)]
    assert _merge_spans(spans, 15 * S, max_gap=S) == [(0, 8 * S)]


def test_merging_stops_at_the_chunk_length():
    spans = [(0, 9 * S), (int(9.2 * S), 14 * S), (int(14.1 * S), 16 * S)]
    assert _merge_spans(spans, 15 * S) == [(0, 14 * S), (int(14.1 * S), 16 * S)]
    assert _merge_spans([], 15 * S) == []


# --- fallback decisions ---------------------------------------------------------------------------
def test_fallback_reasons_in_order():
    text = "the quick brown fox jumps over the lazy dog and runs away into the woods"
    assert fallback_reason(result(""), DecodeFlags(), 3.0, "en") == "empty"
    assert fallback_reason(result(""), DecodeFlags(), 0.0, "en") is None  # silence: nothing lost
    # a used-up budget is named first even when the text also looped
    assert fallback_reason(result(text), DecodeFlags(truncated=True, looped=True), 4.0, "en") == "budget"
    assert fallback_reason(result(text), DecodeFlags(looped=True, broken=True), 4.0, "en") == "loop"
    assert fallback_reason(result(text), DecodeFlags(broken=True), 4.0, "en") == "broken"
    assert fallback_reason(result(text, confidence=-1.2), DecodeFlags(), 4.0, "en") == "confidence"
    assert fallback_reason(result(text, compression=2.6), DecodeFlags(), 4.0, "en") == "compression"
    assert fallback_reason(result("yes"), DecodeFlags(), 12.0, "en") == "coverage"
    assert fallback_reason(result(text), DecodeFlags(), 4.0, "en") is None


def test_after_a_careful_decode_the_fast_text_stays_only_when_it_was_sane_and_longer():
    fast = result("one two three four five six seven")
    shorter = result("one two three")
    assert keep_fast("coverage", fast, DecodeFlags(), shorter, "en")
    assert keep_fast("budget", fast, DecodeFlags(truncated=True), shorter, "en")
    assert not keep_fast("coverage", fast, DecodeFlags(), result(fast.text + " eight"), "en")
    assert not keep_fast("confidence", fast, DecodeFlags(), shorter, "en")  # the fast text itself is suspect
    assert not keep_fast("budget", fast, DecodeFlags(looped=True), shorter, "en")
    assert not keep_fast("coverage", result(fast.text, compression=3.0), DecodeFlags(), shorter, "en")


# --- loops, repeated tails, text -----------------------------------------------------------------
@pytest.mark.parametrize("text, kept", [
    ("He was not. He was not. He was", "He was not."),
    ("one two three four five one two three four five", "one two three four five"),
    ("good morning good morning good morning", "good morning"),
    ("hello there general kenobi", "hello there general kenobi"),
    ("no no", "no no"),  # too short to judge
    ("a b c d e a b c", "a b c d e a b c"),  # 3 words of a 5-word phrase: may be real speech
])
def test_repeated_tail(text, kept):
    assert _drop_repeated_tail(text) == kept


def test_character_loops_of_unspaced_scripts_collapse_to_one_copy():
    assert collapse_loop("勤奸奸奸奸奸奸") == "勤奸"
    assert collapse_loop("ありがとうございます") == "ありがとうございます"


def test_a_looping_careful_segment_keeps_its_first_copy_and_the_text_is_joined_again():
    loop = "la la la la la la la la la la la la"
    res = TranscriptionResult(loop + " end", "en", 1.0, 5.0, [
        Segment(0.0, 3.0, loop, -0.5, compression_ratio=compression_ratio(loop)),
        Segment(3.0, 5.0, "end", -0.2, compression_ratio=compression_ratio("end")),
    ])
    out = _without_loops(res)
    assert out.text == "la la end"
    assert out.segments[0].compression_ratio < 2.4


def test_compression_ratio_is_faster_whispers():
    from faster_whisper.transcribe import get_compression_ratio

    text = "the cat sat on the mat " * 10
    assert compression_ratio(text) == get_compression_ratio(text) > 2.4
    assert compression_ratio("") == 0.0


def test_join_texts_spaces_only_spaced_scripts():
    assert join_texts([" Hello.", "World ", ""], "en") == "Hello. World"
    assert join_texts(["こんにちは。", "元気です"], "ja") == "こんにちは。元気です"


def test_token_budget_grows_with_the_clip_and_caps_at_a_window():
    assert token_budget(1.0) < token_budget(5.0) < token_budget(10.0)
    assert token_budget(27.0) > MAX_NEW_TOKENS  # the decoder caps it (short_window: min with MAX_NEW_TOKENS)


# --- device choice ----------------------------------------------------------------------------------
def test_choose_device(monkeypatch):
    import ctranslate2

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 0)
    assert choose_device("auto", "auto") == DeviceChoice("cpu", "int8")
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 2)
    monkeypatch.setattr(ctranslate2, "get_supported_compute_types", lambda device: {"float16", "int8"})
    assert choose_device("auto", "auto") == DeviceChoice("cuda", "float16")
    monkeypatch.setattr(ctranslate2, "get_supported_compute_types", lambda device: {"float32", "int8_float32"})
    assert choose_device("cuda", "auto") == DeviceChoice("cuda", "int8_float32")
    assert choose_device("cpu", "float32") == DeviceChoice("cpu", "float32")

    def broken():
        raise RuntimeError("CUDA driver version is insufficient")

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", broken)
    assert choose_device("auto", "auto").device == "cpu"  # a broken CUDA install never stops a CPU start


# --- the lane plan ----------------------------------------------------------------------------------
def test_device_index_lists():
    assert parse_device_index("0") == (0,)
    assert parse_device_index(" 1, 0 ") == (1, 0)
    assert parse_device_index(3) == (3,)
    assert parse_device_index([0, 2]) == (0, 2)
    for bad in ("", "0,", "x", "-1", "0,0", "1.5", True, []):
        with pytest.raises(ValueError, match="device-index"):
            parse_device_index(bad)


def test_settings_and_flag_take_a_list_and_refuse_one_on_the_cpu():
    from whisper_stt.cli import parse

    assert Settings(device_index="0,1").device_indexes == (0, 1)
    assert parse(["--device-index", "2,3"])[0].device_indexes == (2, 3)
    assert Settings().device_indexes == (0,)
    with pytest.raises(ValueError, match="the CPU runs one lane"):
        Settings(device="cpu", device_index="0,1")
    with pytest.raises(ValueError, match="each GPU may be named once"):
        Settings(device_index="1,1")


def test_lane_plan_on_cpu_is_one_lane_and_says_when_a_list_is_ignored():
    cpu = DeviceChoice("cpu", "int8")
    plan = plan_lanes(cpu, "0", 0, 0)
    assert (plan.device_indexes, plan.max_concurrent, plan.note) == ((0,), 1, "")
    plan = plan_lanes(cpu, "0,1", 3, 0)  # device auto on a box without a GPU
    assert plan.device_indexes == (0,) and plan.max_concurrent == 3
    assert "ignored" in plan.note and "0,1" in plan.note


def test_lane_plan_on_gpus_is_one_lane_per_gpu():
    gpu = DeviceChoice("cuda", "float16")
    plan = plan_lanes(gpu, "1,0", 0, 2)
    assert plan.device_indexes == (1, 0) and plan.lanes == 2
    assert plan.max_concurrent == 30  # 15 per GPU, the original's figure for one
    assert plan_lanes(gpu, "0", 4, 1).max_concurrent == 4
    with pytest.raises(DeviceIndexError, match="device-index 2: 2 GPU") as caught:
        plan_lanes(gpu, "0,2", 0, 2)
    assert isinstance(caught.value, ModelError)  # serve.py reports it as a one-line start-up error
    with pytest.raises(DeviceIndexError, match="no usable GPU"):
        plan_lanes(gpu, "0", 0, 0)


def test_cuda_asked_for_without_a_usable_gpu_is_a_one_line_start_up_error(monkeypatch):
    import ctranslate2

    def no_driver(device):
        raise RuntimeError("CUDA failed with error CUDA driver version is insufficient for CUDA runtime version")

    monkeypatch.setattr(ctranslate2, "get_supported_compute_types", no_driver)
    with pytest.raises(ModelError, match="--device cuda: no usable GPU"):
        choose_device("cuda", "auto")


def test_least_loaded_breaks_ties_by_the_next_figure_then_the_number():
    assert least_loaded([(1, 0), (0, 5), (0, 2)]) == 2
    assert least_loaded([(0, 0), (0, 0)]) == 0


class FakeLane:
    """StreamScheduler's interface, recording what it was given."""

    def __init__(self, name: str) -> None:
        self.name, self.max_batch = name, 8
        self.pending_finals = self.pending_partials = self.running = 0
        self.forgotten: list = []
        self.busy_seconds, self.audio_seconds = 1.0, 10.0
        self.closed = False

    async def final(self, key, audio, language, beam_size):
        return (self.name, "final", key)

    async def partial(self, key, audio, language):
        return (self.name, "partial", key)

    def forget(self, key) -> None:
        self.forgotten.append(key)

    def close(self) -> None:
        self.closed = True

    def oldest_wait(self) -> float:
        return {"a": 0.2, "b": 0.7}.get(self.name, 0.0)

    def snapshot(self) -> dict:
        return {"pending_finals": self.pending_finals, "finals_done": 3, "oldest_wait_s": self.oldest_wait(),
                "busy_seconds": self.busy_seconds, "real_time_factor": 0.1}


def test_sessions_spread_over_lanes_and_stay_on_theirs():
    a, b = FakeLane("a"), FakeLane("b")
    lanes = StreamLanes([a, b], [0, 1])
    audio = np.zeros(S, np.float32)
    assert asyncio.run(lanes.final("s1", audio, "en", 5))[0] == "a"
    assert asyncio.run(lanes.final("s2", audio, "en", 5))[0] == "b"
    b.pending_finals = 4  # busier: the next new session goes to the other lane when sessions tie
    assert asyncio.run(lanes.partial("s3", audio, "en"))[0] == "a"
    assert asyncio.run(lanes.partial("s2", audio, "en"))[0] == "b"  # sticky, however busy
    assert lanes.sessions() == [2, 1]
    lanes.forget("s1")
    lanes.forget("never-seen")
    assert a.forgotten == ["s1"] and b.forgotten == [] and lanes.sessions() == [1, 1]
    b.pending_finals = 0
    assert lanes.lane_for("s4") == 0  # sessions tie, backlogs tie: the lower number
    lanes.close()
    assert a.closed and b.closed


def test_lane_figures_are_summed_and_kept_per_lane():
    a, b = FakeLane("a"), FakeLane("b")
    a.pending_finals = 2
    lanes = StreamLanes([a, b], [3, 5], file_calls=lambda: [1, 0])
    assert lanes.lane_for("s1") == 1  # lane a has finals waiting
    snap = lanes.snapshot()
    assert snap["pending_finals"] == 2 and snap["finals_done"] == 6
    assert snap["oldest_wait_s"] == 0.7  # the worst lane's lag
    assert snap["real_time_factor"] == 0.1  # 2 s busy for 20 s of audio
    assert [(lane["device_index"], lane["sessions"], lane["file_calls"]) for lane in snap["lanes"]] == [
        (3, 0, 1), (5, 1, 0)]


class FakeModel:
    supported_languages = ["en"]

    def __init__(self, name: str) -> None:
        self.name = name


def test_engine_runs_each_lane_and_file_call_on_its_own_gpu_model():
    engine = Engine(FakeModel("gpu0"), model_name="fake", device="cuda", compute_type="float16", max_concurrent=4)
    try:
        # Stand-in for the short-window decoder: reports which model the lane's call ran on.
        engine._batch_blocking = lambda items, beam_size, *args: [engine.model.name for _ in items]
        engine.spread_over([FakeModel("gpu1")], [0, 1])
        assert engine.device_indexes == (0, 1) and [m.name for m in engine.models] == ["gpu0", "gpu1"]
        assert engine.streams.lane_for("first") == 0
        assert asyncio.run(engine.streams.final("second", np.zeros(S, np.float32), "en", 5)) == "gpu1"
        assert engine.model.name == "gpu0"  # outside a call: the first model

        # Files: the least busy model; a call holding gpu0 sends the next one to gpu1.
        assert engine.pool.submit(lambda: engine.model.name).result(5) == "gpu0"
        holding, release = threading.Event(), threading.Event()

        def hold():
            holding.set()
            release.wait(5)
            return engine.model.name

        held = engine.pool.submit(hold)
        assert holding.wait(5)
        assert engine.pool.submit(lambda: engine.model.name).result(5) == "gpu1"
        assert engine.streams.snapshot()["lanes"][0]["file_calls"] == 1
        release.set()
        assert held.result(5) == "gpu0"
    finally:
        engine.close()


def test_engine_with_one_device_keeps_the_single_lane():
    engine = Engine(FakeModel("cpu"), model_name="fake", device="cpu", compute_type="int8", max_concurrent=1)
    try:
        engine.spread_over([], [0])
        assert not isinstance(engine.streams, StreamLanes) and engine.pool.around is None
        assert engine.pool.submit(lambda: engine.model.name).result(5) == "cpu"
    finally:
        engine.close()


def test_stream_lane_threads_rule():
    from whisper_stt.engine.device import stream_threads

    # a 2-core CPU with two lane workers: one thread per lane call, on a model copy of its own
    assert stream_threads("cpu", 0, 0, 2, cores=2) == 1
    assert stream_threads("cpu", 0, 0, 2, cores=16) == 8
    assert stream_threads("cpu", 0, 0, 3, cores=2) == 1  # never 0 threads
    # the same threads per call as the files' model: one shared copy
    assert stream_threads("cpu", 0, 0, 1, cores=2) == 0
    assert stream_threads("cpu", 4, 4, 2, cores=16) == 0
    assert stream_threads("cpu", 0, 2, 2, cores=2) == 0  # asked for all cores = the files' setting
    assert stream_threads("cpu", 0, 3, 2, cores=8) == 3  # asked for explicitly
    # a GPU lane always shares the model
    assert stream_threads("cuda", 0, 0, 1, cores=2) == 0
    assert stream_threads("cuda", 0, 1, 2, cores=2) == 0
