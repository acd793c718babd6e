"""The stream lane with real model calls: priorities, superseded partials, fairness, concurrency."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from whisper_stt.audio import decode_file
from whisper_stt.scheduler import StreamScheduler

from .speech import wer
from .ws_support import LiveServer, concat_with_pauses, load, run, stream


class Recorder:
    """Wraps the engine's batch function: records each batch and can hold the first one."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.labels: dict[int, str] = {}

    def __call__(self, items, beam_size):
        self.batches.append([self.labels.get(id(audio), "?") for audio, _ in items])
        if len(self.batches) == 1:
            self.entered.set()
            self.gate.wait(30)
        return self.engine._batch_blocking(items, beam_size)


@pytest.fixture
def clips(librivox):
    return [decode_file(str(c.path)) for c in librivox]


def test_finals_first_stale_partials_dropped_oldest_session_first(engine, librivox, clips, monkeypatch):
    import whisper_stt.scheduler as scheduler

    # no slack: first previews never ride ahead of the final (that rule has its own test without the model)
    monkeypatch.setattr(scheduler, "RIDE_SLACK_S", 0.0)
    rec = Recorder(engine)
    lane = StreamScheduler(rec, max_batch=8)

    def audio(label, i):
        a = clips[i].copy()
        rec.labels[id(a)] = label
        return a

    async def scenario():
        first = asyncio.ensure_future(lane.partial("s0", audio("s0", 0), "en"))
        await asyncio.get_running_loop().run_in_executor(None, rec.entered.wait, 10)  # lane busy with s0
        a_old = asyncio.ensure_future(lane.partial("a", audio("a-old", 1), "en"))
        b = asyncio.ensure_future(lane.partial("b", audio("b", 2), "en"))
        await asyncio.sleep(0.05)
        final = asyncio.ensure_future(lane.final("c", audio("c-final", 3), None, 5))
        await asyncio.sleep(0.05)
        a_new = asyncio.ensure_future(lane.partial("a", audio("a-new", 4), "en"))
        await asyncio.sleep(0.05)
        rec.gate.set()
        return await asyncio.wait_for(asyncio.gather(first, a_old, b, final, a_new), 120)

    first, a_old, b, final, a_new = run(scenario())
    lane.close()
    # the final ran right after the busy batch, alone; then both partials in one batch, and "a" kept
    # its place ahead of "b" although its preview was replaced
    assert rec.batches == [["s0"], ["c-final"], ["a-new", "b"]], rec.batches
    assert a_old is None and lane.superseded == 1
    assert wer(librivox[3].text, final.text) <= 0.1 and final.language == "en"
    assert wer(librivox[4].text, a_new.text) <= 0.2 and wer(librivox[2].text, b.text) <= 0.2
    assert wer(librivox[0].text, first.text) <= 0.2


def test_forget_and_close_release_waiters(engine, clips):
    rec = Recorder(engine)
    lane = StreamScheduler(rec)

    async def scenario():
        busy = asyncio.ensure_future(lane.partial("x", clips[0], "en"))
        await asyncio.get_running_loop().run_in_executor(None, rec.entered.wait, 10)
        gone = asyncio.ensure_future(lane.final("gone", clips[1], "en", 5))
        await asyncio.sleep(0.05)
        lane.forget("gone")
        rec.gate.set()
        await busy
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert lane.pending_finals == 0 and lane.pending_partials == 0

    run(scenario())
    lane.close()
    with pytest.raises(RuntimeError):
        run(lane.partial("late", clips[0], "en"))


def test_concurrent_sessions_get_the_same_finals_as_one_alone(make_app, librivox):
    handle = make_app(no_auth=True)
    audio = concat_with_pauses([load(c.path) for c in librivox], pause_s=2.5, tail_s=0.5)
    start = {"command": "start", "language": "en", "audio_format": "pcm16"}
    with LiveServer(handle.app) as live:
        alone = run(stream(live.url, audio, start=start, speed=4.0), 240)

        async def many():
            return await asyncio.gather(*(stream(live.url, audio, start=start, speed=4.0) for _ in range(6)))

        together = run(many(), 400)
        stats = handle.app.state.ctx.stats
        assert live.wait_for(lambda: not stats.connections, 10)
    reference = " ".join(c.text for c in librivox)
    alone_text = alone.finals_text()
    assert wer(reference, alone_text) <= 0.05
    for received in together:
        assert len(received.of("final")) == len(alone.of("final"))
        assert wer(reference, received.finals_text()) <= wer(reference, alone_text) + 0.01
    lane = handle.app.state.ctx.engine.streams
    assert lane.pending_finals == 0 and lane.pending_partials == 0 and lane.running == 0


def test_abrupt_disconnects_under_load_leave_nothing_behind(make_app, librivox):
    handle = make_app(no_auth=True)
    ctx = handle.app.state.ctx
    audio = concat_with_pauses([load(c.path) for c in librivox[:3]], pause_s=2.5, tail_s=0.5)
    pcm = (audio * 32767).astype("<i2").tobytes()
    start = {"command": "start", "language": "en", "audio_format": "pcm16"}

    async def vanish():
        from .ws_support import connect, recv_json

        ws = await connect(live.url)
        await ws.send(json.dumps(start))
        await recv_json(ws)
        for i in range(0, len(pcm) // 2, 6400):  # half the speech, fast: partials and finals in flight
            await ws.send(pcm[i:i + 6400])
            await asyncio.sleep(0.01)
        ws.transport.abort()

    async def load_and_vanish():
        stay = [asyncio.ensure_future(stream(live.url, audio, start=start, speed=4.0)) for _ in range(3)]
        await asyncio.gather(*(vanish() for _ in range(5)))
        return await asyncio.gather(*stay)

    with LiveServer(handle.app) as live:
        stayed = run(load_and_vanish(), 300)
        assert live.wait_for(lambda: not ctx.stats.connections, 30), ctx.stats.connections
        lane = ctx.engine.streams
        assert live.wait_for(lambda: lane.running == 0 and lane.pending_finals == 0 and lane.pending_partials == 0, 30)
        leftover = [n for n in live.task_names() if n.startswith("ws-")]
        assert leftover == []
    reference = " ".join(c.text for c in librivox[:3])
    for received in stayed:
        assert wer(reference, received.finals_text()) <= 0.1
