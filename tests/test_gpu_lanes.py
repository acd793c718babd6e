"""Several lanes (issue 15 item 5) with the real model, on the CPU: this box has no GPU, so two CPU models
stand in for two GPUs. What is checked is the engine's side: each lane's and each file call's decoding
really runs on its own model and gives the right words, and /health shows every GPU of the lanes."""

from __future__ import annotations

import asyncio
import threading

import pytest

from whisper_stt.audio import decode_file
from whisper_stt.engine import Engine
from whisper_stt.engine.lanes import StreamLanes

from .conftest import MODELS_DIR
from .speech import wer


def record_encoders(models) -> list:
    """Wrap each model's ``encode`` so the returned list records which model every encoder call ran on
    (the real encode still runs; remove with ``model.__dict__.pop("encode")``)."""
    used: list = []
    lock = threading.Lock()
    for model in models:
        def spy(features, _real=model.encode, _model=model):
            with lock:
                used.append(_model)
            return _real(features)

        model.encode = spy
    return used


@pytest.fixture(scope="module")
def two_lane_engine():
    from faster_whisper import WhisperModel

    from whisper_stt.models import resolve_model

    path = str(resolve_model("base", MODELS_DIR).path)
    models = [WhisperModel(path, device="cpu", compute_type="int8", num_workers=2) for _ in range(2)]
    engine = Engine(models[0], model_name="base", device="cpu", compute_type="int8", max_concurrent=2)
    engine.spread_over(models[1:], [0, 1])
    yield engine, models
    engine.close()


def test_each_lane_and_file_call_decodes_on_its_own_model(two_lane_engine, librivox):
    engine, models = two_lane_engine
    assert isinstance(engine.streams, StreamLanes)
    used = record_encoders(models)  # which model each encoder call ran on (the real encode still runs)
    try:
        clips = librivox[:2]
        audios = [decode_file(str(c.path)) for c in clips]

        async def two_sessions():
            return await asyncio.gather(*(engine.streams.final(f"session-{i}", a, "en", 5)
                                          for i, a in enumerate(audios)))

        finals = asyncio.run(two_sessions())
        assert engine.streams.sessions() == [1, 1]  # one session per lane
        for clip, result in zip(clips, finals):
            assert wer(clip.text, result.text) <= 0.25, result.text
        assert models[0] in used and models[1] in used  # both lanes did their own encoding

        # A file call while one holds the first model goes to the second, with the right words.
        used.clear()
        file_result = asyncio.run(engine.transcribe(audios[1], "en"))
        assert wer(clips[1].text, file_result.text) <= 0.25, file_result.text
        assert used and all(m is models[0] for m in used)  # idle: the first model
        hold, release = threading.Event(), threading.Event()
        blocker = engine.pool.submit(lambda: (hold.set(), release.wait(30)))
        assert hold.wait(10)
        used.clear()
        file_result = asyncio.run(engine.transcribe(audios[0], "en"))
        release.set()
        blocker.result(10)
        assert wer(clips[0].text, file_result.text) <= 0.25, file_result.text
        assert used and all(m is models[1] for m in used)
    finally:
        for model in models:
            model.__dict__.pop("encode", None)
        for key in ("session-0", "session-1"):
            engine.streams.forget(key)


def test_health_shows_every_gpu_of_the_lanes(make_app, engine, monkeypatch):
    import whisper_stt.routes.status as status

    handle = make_app()
    with handle.client() as client:
        body = client.get("/health").json()
        assert body["gpu"] is None and "gpus" not in body  # the CPU: one lane
        assert "lanes" not in body["transcriptions"]["stream_lane"]
        monkeypatch.setattr(engine, "device", "cuda")
        monkeypatch.setattr(engine, "device_indexes", (2, 0))
        monkeypatch.setattr(status, "gpu_info", lambda index=0: {"name": f"GPU {index}"})
        body = client.get("/health").json()
    assert body["gpu"] == {"name": "GPU 2"}
    assert body["gpus"] == [{"name": "GPU 2", "index": 2}, {"name": "GPU 0", "index": 0}]


def test_cpu_stream_lane_runs_on_its_own_model_copy_with_fewer_threads(engine, librivox):
    """On this 2-core box the lane's two workers get one thread per call on a copy of the model (the
    files keep every core): finals and partials encode on the lane's copy, file calls on the main model,
    and both give the right words."""
    from whisper_stt.engine.device import cpu_cores

    if cpu_cores() < 2:
        pytest.skip("needs two cores: with one, lane and files share one thread setting and one model")
    assert engine.stream_model is not None and engine.stream_threads == max(1, cpu_cores() // 2)
    main, lane = engine.models[0], engine.stream_model
    used = record_encoders([main, lane])
    try:
        clip = librivox[0]
        audio = decode_file(str(clip.path))

        async def both():
            final = await engine.streams.final("lane-test", audio, "en", 5)
            engine.streams.forget("lane-test")
            return final

        final = asyncio.run(both())
        assert wer(clip.text, final.text) <= 0.25, final.text
        assert used and all(m is lane for m in used)  # the final (and its edge check) ran on the copy
        used.clear()
        result = asyncio.run(engine.transcribe(audio, "en"))
        assert wer(clip.text, result.text) <= 0.25, result.text
        assert used and all(m is main for m in used)  # the file call on the main model
    finally:
        for model in (main, lane):
            model.__dict__.pop("encode", None)
