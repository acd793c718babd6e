"""OpenAI Realtime transcription sessions (/v1/realtime) driven by the official ``openai`` package's
realtime clients (GA ``client.realtime.connect`` and beta ``client.beta.realtime.connect``), with the real
bundled model and LibriVox speech; hostile input over plain ``websockets``."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time

import httpx
import numpy as np
import pytest
import websockets
from openai import AsyncOpenAI

from whisper_stt.streaming.codecs import encode_ulaw, resample
from whisper_stt.streaming.recogniser import EngineRecogniser

from .speech import wer
from .ws_support import concat_with_pauses, load, run

ROUND = 0.02  # one word in a few hundred
ULAW_SLACK = 0.05  # 8 kHz telephone band: measured 1-3 points worse than 16 kHz on these clips


@pytest.fixture(scope="module")
def speech(librivox):
    audio = concat_with_pauses([load(c.path) for c in librivox], pause_s=2.5, tail_s=2.0)
    return audio, " ".join(c.text for c in librivox)


@pytest.fixture(scope="module")
def whole_file_wer(engine, speech):
    audio, reference = speech
    return wer(reference, asyncio.run(engine.transcribe(audio, None)).text)


def client_for(server, key) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=f"http://127.0.0.1:{server.port}/v1",
                       websocket_base_url=f"ws://127.0.0.1:{server.port}/v1", max_retries=0)


GA_UPDATE = {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
    "format": {"type": "audio/pcm", "rate": 24000},
    "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
    "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                       "silence_duration_ms": 1200}}}}}


async def play(conn, data: bytes, bytes_per_s: int, *, speed: float = 1.0, chunk_s: float = 0.1,
               tail_wait: float = 0.0, until=None, events=None) -> list:
    """Send ``data`` as append events at ``speed`` x real time while collecting server events."""
    events = [] if events is None else events

    async def reader():
        async for event in conn:
            events.append((time.monotonic(), event))

    task = asyncio.create_task(reader())
    step = int(bytes_per_s * chunk_s)
    step -= step % 2
    began = time.monotonic()
    for i, pos in enumerate(range(0, len(data), step)):
        await conn.input_audio_buffer.append(audio=base64.b64encode(data[pos:pos + step]).decode())
        await asyncio.sleep(max(0.0, began + (i + 1) * chunk_s / speed - time.monotonic()))
    deadline = time.monotonic() + 60
    while until is not None and not until(events) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(tail_wait)
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
    return events


def by_item(events) -> dict:
    items: dict = {}
    for t, e in events:
        item = getattr(e, "item_id", None)
        if item is not None:
            items.setdefault(item, []).append((t, e))
    return items


def completed_count(n):
    return lambda events: sum(e.type.endswith("transcription.completed") for _, e in events) >= n


def check_items(events) -> str:
    """Every item: deltas add up to its transcript; returns the transcripts joined."""
    texts = []
    for item, evs in by_item(events).items():
        kinds = [e.type for _, e in evs]
        done = [e for _, e in evs if e.type.endswith("transcription.completed")]
        assert len(done) == 1, kinds
        deltas = "".join(e.delta for _, e in evs if e.type.endswith("transcription.delta"))
        assert deltas == done[0].transcript, (deltas, done[0].transcript)
        assert done[0].usage.type == "duration" and done[0].usage.seconds > 0
        assert kinds.index("input_audio_buffer.committed") < kinds.index(done[0].type)
        texts.append(done[0].transcript)
    return " ".join(t for t in texts if t)


def test_ga_pcm16_24k_real_time_deltas_while_speaking(live, speech, whole_file_wer):
    handle, server = live()
    audio, reference = speech
    pcm = (np.clip(resample(audio, 16000, 24000), -1, 1) * 32767).astype("<i2").tobytes()

    async def main():
        client = client_for(server, handle.api_key)
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            first = await conn.recv()
            assert first.type == "session.created" and first.session.type == "transcription"
            await conn.send(GA_UPDATE)
            updated = await conn.recv()
            assert updated.type == "session.updated", updated
            assert updated.session.audio.input.transcription.language == "en"
            return await play(conn, pcm, 48000, until=completed_count(5))

    events = run(main(), 240)
    assert not [e for _, e in events if e.type == "error"], [e for _, e in events if e.type == "error"]
    text = check_items(events)
    streamed = wer(reference, text)
    assert streamed <= whole_file_wer + 0.02 + ROUND, (streamed, whole_file_wer, text)
    items = by_item(events)
    assert len(items) == 5
    early = 0
    for evs in items.values():
        kinds = [e.type for _, e in evs]
        assert kinds[0] == "input_audio_buffer.speech_started"
        stopped = kinds.index("input_audio_buffer.speech_stopped")
        early += any(k.endswith("transcription.delta") for k in kinds[:stopped])
    assert early >= 1, "a delta arrives while the person is still speaking"


def test_beta_g711_ulaw_8k(live, speech, whole_file_wer):
    handle, server = live()
    audio, reference = speech
    ulaw = encode_ulaw(resample(audio, 16000, 8000))

    async def main():
        client = client_for(server, handle.api_key)
        async with client.beta.realtime.connect(model="whisper-1", extra_query={"intent": "transcription"}) as conn:
            first = await conn.recv()
            assert first.type == "transcription_session.created"
            await conn.send({"type": "transcription_session.update", "session": {
                "input_audio_format": "g711_ulaw",
                "input_audio_transcription": {"model": "whisper-1", "language": "en", "prompt": ""},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 1200},
                "input_audio_noise_reduction": {"type": "near_field"}}})
            updated = await conn.recv()
            assert updated.type == "transcription_session.updated", updated
            assert updated.session.input_audio_format == "g711_ulaw"
            return await play(conn, ulaw, 8000, speed=2.0, until=completed_count(5))

    events = run(main(), 240)
    assert not [e for _, e in events if e.type == "error"]
    text = check_items(events)
    streamed = wer(reference, text)
    assert streamed <= whole_file_wer + ULAW_SLACK + ROUND, (streamed, whole_file_wer, text)


def test_manual_commits_when_turn_detection_is_null(live, librivox):
    handle, server = live()
    clip = librivox[1]
    pcm = (np.clip(resample(load(clip.path), 16000, 24000), -1, 1) * 32767).astype("<i2").tobytes()

    async def main():
        client = client_for(server, handle.api_key)
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            await conn.recv()
            update = json.loads(json.dumps(GA_UPDATE))
            update["session"]["audio"]["input"]["turn_detection"] = None
            await conn.send(update)
            assert (await conn.recv()).type == "session.updated"
            await conn.input_audio_buffer.commit()  # nothing yet
            error = await conn.recv()
            assert error.type == "error" and error.error.code == "input_audio_buffer_commit_empty"
            events = await play(conn, pcm, 48000, speed=4.0, tail_wait=1.0)
            assert events == []  # nothing is committed until the client commits
            await conn.input_audio_buffer.commit()
            return await play(conn, b"", 48000, until=completed_count(1))

    events = run(main(), 120)
    kinds = [e.type for _, e in events]
    assert kinds[0] == "input_audio_buffer.committed" and "input_audio_buffer.speech_started" not in kinds
    assert wer(clip.text, check_items(events)) <= 0.2  # one word in eight (a short clip, no context)


def test_hostile_input_gets_an_error_each_and_the_session_lives_on(live, librivox, caplog):
    caplog.set_level(logging.INFO)
    handle, server = live()
    url = f"ws://127.0.0.1:{server.port}/v1/realtime?intent=transcription"
    clip = librivox[1]
    pcm = (np.clip(resample(load(clip.path), 16000, 24000), -1, 1) * 32767).astype("<i2").tobytes()

    async def main():
        # wrong key: an error event, then the socket is closed
        async with websockets.connect(url, additional_headers={"Authorization": "Bearer sk-wrong"}) as ws:
            error = json.loads(await ws.recv())
            assert error["type"] == "error" and error["error"]["code"] == "invalid_api_key"
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
        # the browser way: the key in a subprotocol; "realtime" is the one accepted
        protocols = ["realtime", f"openai-insecure-api-key.{handle.api_key}", "openai-beta.realtime-v1"]
        async with websockets.connect(url, subprotocols=protocols, max_size=None) as ws:
            assert ws.subprotocol == "realtime"
            assert json.loads(await ws.recv())["type"] == "transcription_session.created"

            async def expect_error(frame, code, param=None):
                await ws.send(frame)
                msg = json.loads(await ws.recv())
                assert msg["type"] == "error", msg
                assert msg["error"]["code"] == code, msg
                if param:
                    assert msg["error"]["param"] == param, msg
                return msg

            chunk = base64.b64encode(pcm[:4800]).decode()
            await expect_error(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}),
                               "session_not_configured")
            await expect_error("{not json", "invalid_json")
            await expect_error("[1, 2]", "invalid_event")
            await expect_error(b"\x00\x01", "invalid_event")
            await expect_error(json.dumps({"type": "response.create"}), "invalid_event_type", "type")
            await expect_error(json.dumps({"type": "transcription_session.update", "session": {
                "input_audio_format": "opus"}}), "invalid_value", "session.input_audio_format")
            await expect_error(json.dumps({"type": "session.update", "session": {"type": "realtime"}}),
                               "invalid_value", "session.type")
            msg = await expect_error(json.dumps({"type": "transcription_session.update", "event_id": "ev1",
                                                 "session": {"voice": "alloy", "turn_detection": None}}),
                                     "unknown_parameter", "session.voice")
            assert msg["error"]["event_id"] == "ev1"
            assert json.loads(await ws.recv())["type"] == "transcription_session.updated"
            await expect_error(json.dumps({"type": "input_audio_buffer.append", "audio": "@@@"}),
                               "invalid_value", "audio")
            huge = "A" * (16 * 1024 * 1024)
            await expect_error(json.dumps({"type": "input_audio_buffer.append", "audio": huge}),
                               "invalid_value", "audio")
            await expect_error(json.dumps({"type": "transcription_session.update", "session": {
                "input_audio_transcription": {"language": "xx"}}}), "invalid_value",
                "session.input_audio_transcription.language")
            # still usable: audio, commit, transcript
            for pos in range(0, len(pcm), 48000):
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(pcm[pos:pos + 48000]).decode()}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
                assert msg["type"] != "error", msg
                if msg["type"] == "conversation.item.input_audio_transcription.completed":
                    break
            assert wer(clip.text, msg["transcript"]) <= 0.2
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            assert json.loads(await ws.recv())["type"] == "input_audio_buffer.cleared"

    run(main(), 120)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


def test_revoking_the_key_ends_the_session(live):
    handle, server = live()
    url = f"ws://127.0.0.1:{server.port}/v1/realtime?intent=transcription"

    async def main():
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {handle.api_key}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            assert server.wait_for(lambda: len(handle.app.state.ctx.websockets) == 1)
            async with httpx.AsyncClient() as http:
                answer = await http.delete(f"http://127.0.0.1:{server.port}/admin/keys/{handle.api_key}",
                                           headers=handle.admin)
                assert answer.status_code == 200
            msg = json.loads(await asyncio.wait_for(ws.recv(), 20))
            assert msg["type"] == "error" and msg["error"]["code"] == "invalid_api_key"
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 20)

    run(main(), 60)
    assert server.wait_for(lambda: not handle.app.state.ctx.websockets and not handle.app.state.ctx.stats.connections)


def test_prompt_and_word_timestamps_take_faster_whispers_own_decoding():
    calls = []

    class FakeEngine:
        beam_size = 5

        async def transcribe(self, audio, language, **options):
            calls.append(options)

    asyncio.run(EngineRecogniser(FakeEngine(), prompt="Dashwood, Norland.").final(None, np.zeros(10), "en"))
    assert calls[0]["initial_prompt"] == "Dashwood, Norland." and calls[0]["vad_filter"] is False


def test_shutdown_transcribes_the_open_utterance_then_closes_1001(live, librivox):
    handle, server = live()
    clip = librivox[1]
    pcm = (np.clip(resample(load(clip.path), 16000, 24000), -1, 1) * 32767).astype("<i2").tobytes()
    url = f"ws://127.0.0.1:{server.port}/v1/realtime?intent=transcription"

    async def main():
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {handle.api_key}"},
                                      max_size=None) as ws:
            await ws.recv()
            await ws.send(json.dumps(GA_UPDATE))
            assert json.loads(await ws.recv())["type"] == "session.updated"
            for pos in range(0, len(pcm), 48000):  # no silence after it: the utterance is still open
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(pcm[pos:pos + 48000]).decode()}))
            await ws.send(json.dumps({"type": "marker"}))  # its error means the server has taken all the audio
            while json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] != "error":
                pass
            asyncio.run_coroutine_threadsafe(handle.app.state.ctx.close_websockets(20), server.loop)
            transcript = None
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    if msg["type"] == "conversation.item.input_audio_transcription.completed":
                        transcript = msg["transcript"]
            assert closed.value.rcvd.code == 1001
            assert transcript is not None and wer(clip.text, transcript) <= 0.2

    run(main(), 120)
