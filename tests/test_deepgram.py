"""Deepgram live transcription (/v1/listen) driven by the official ``deepgram-sdk`` live client, with the
real bundled model and LibriVox speech; hostile input over plain ``websockets``."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import numpy as np
import pytest
import websockets
from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.core.events import EventType
from deepgram.environment import DeepgramClientEnvironment

from whisper_stt.streaming.codecs import encode_ulaw, resample

from .speech import wav_bytes, wer
from .ws_support import concat_with_pauses, load, run

ROUND = 0.02


@pytest.fixture(scope="module")
def speech(librivox):
    audio = concat_with_pauses([load(c.path) for c in librivox], pause_s=2.5, tail_s=2.5)
    return audio, " ".join(c.text for c in librivox)


@pytest.fixture(scope="module")
def whole_file_wer(engine, speech):
    audio, reference = speech
    return wer(reference, asyncio.run(engine.transcribe(audio, None)).text)


def deepgram(server, key) -> AsyncDeepgramClient:
    env = DeepgramClientEnvironment(base=f"http://127.0.0.1:{server.port}",
                                    production=f"ws://127.0.0.1:{server.port}", agent="", agent_rest="")
    return AsyncDeepgramClient(api_key=key, environment=env)


async def session(server, key, data: bytes, bytes_per_s: int, *, speed: float = 1.0, finalize: bool = False,
                  **options) -> list:
    """Stream ``data`` through the SDK's live client; returns (time, message) until the socket closes."""
    messages: list = []
    async with deepgram(server, key).listen.v1.connect(model="nova-3", **options) as sock:
        sock.on(EventType.MESSAGE, lambda m: messages.append((time.monotonic(), m)))
        listener = asyncio.create_task(sock.start_listening())
        step = int(bytes_per_s * 0.1)
        step -= step % 2
        began = time.monotonic()
        for i, pos in enumerate(range(0, len(data), step)):
            await sock.send_media(data[pos:pos + step])
            await asyncio.sleep(max(0.0, began + (i + 1) * 0.1 / speed - time.monotonic()))
        if finalize:
            await sock.send_finalize()
            deadline = time.monotonic() + 60
            while not any(getattr(m, "from_finalize", False) for _, m in messages) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        await sock.send_keep_alive()
        await sock.send_close_stream()
        await asyncio.wait_for(listener, 60)
    return messages


def results(messages, final=None):
    out = [m for _, m in messages if getattr(m, "type", None) == "Results"]
    return out if final is None else [m for m in out if bool(m.is_final) == final]


def test_live_sdk_interim_and_final_results_words_and_utterance_end(live, speech, whole_file_wer):
    handle, server = live()
    audio, reference = speech
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    messages = run(session(server, handle.api_key, pcm, 32000, encoding="linear16", sample_rate=16000,
                           channels=1, interim_results="true", endpointing=1200, utterance_end_ms=1000,
                           vad_events="true", language="en", punctuate="true", smart_format="true"), 240)
    kinds = [getattr(m, "type", None) for _, m in messages]
    assert "Error" not in kinds, [m for _, m in messages if getattr(m, "type", None) == "Error"]
    finals = results(messages, final=True)
    spoken = [f for f in finals if f.channel.alternatives[0].transcript]
    assert len(spoken) == 5 and all(f.speech_final for f in spoken)  # each sentence ends with a pause
    text = " ".join(f.channel.alternatives[0].transcript for f in spoken)
    streamed = wer(reference, text)
    assert streamed <= whole_file_wer + 0.02 + ROUND, (streamed, whole_file_wer, text)
    duration = len(audio) / 16000
    last_end = 0.0
    for f in spoken:
        words = f.channel.alternatives[0].words
        assert words and f.start <= words[0].start and words[-1].end <= f.start + f.duration + 0.05
        for w in words:
            assert last_end - 0.01 <= w.start <= w.end <= duration, (w, last_end)
            last_end = w.end
            assert w.word and w.punctuated_word and 0 <= w.confidence <= 1
    # interim results come before each final, while the sentence is still being spoken
    for f in spoken:
        i = next(k for k, (_, m) in enumerate(messages) if m is f)
        assert any(getattr(m, "type", None) == "Results" and not m.is_final and m.start == f.start
                   for _, m in messages[:i])
    assert kinds.count("SpeechStarted") >= 5
    ends = [m for _, m in messages if getattr(m, "type", None) == "UtteranceEnd"]
    assert len(ends) >= 4 and all(any(abs(e.last_word_end - f.channel.alternatives[0].words[-1].end) < 0.01
                                      for f in spoken) for e in ends)
    assert kinds[-1] == "Metadata" and messages[-1][1].duration == pytest.approx(duration, abs=0.1)


def test_wav_stream_without_encoding_and_finalize(live, librivox):
    handle, server = live()
    clip = librivox[1]
    samples = load(clip.path)
    messages = run(session(server, handle.api_key, wav_bytes(samples), 32000, speed=4.0, finalize=True,
                           endpointing="false"), 120)
    finals = results(messages, final=True)
    assert finals and finals[0].from_finalize and not finals[0].speech_final
    assert wer(clip.text, finals[0].channel.alternatives[0].transcript) <= 0.2


def test_mulaw_8k(live, librivox):
    handle, server = live()
    clip = librivox[0]
    ulaw = encode_ulaw(resample(np.concatenate([load(clip.path), np.zeros(24000, np.float32)]), 16000, 8000))
    messages = run(session(server, handle.api_key, ulaw, 8000, speed=2.0, encoding="mulaw", sample_rate=8000,
                           endpointing=1000, language="en"), 120)
    text = " ".join(m.channel.alternatives[0].transcript for m in results(messages, final=True))
    assert wer(clip.text, text) <= 0.15


def test_bad_key_and_bad_parameters_are_refused_at_the_handshake(live):
    handle, server = live()

    async def main():
        with pytest.raises(ApiError) as refused:
            async with deepgram(server, "sk-wrong").listen.v1.connect(model="nova-3"):
                pass
        assert refused.value.status_code == 401
        with pytest.raises(ApiError) as bad:
            async with deepgram(server, handle.api_key).listen.v1.connect(model="nova-3", channels=2):
                pass
        assert bad.value.status_code == 400

    run(main(), 60)


def test_hostile_control_messages_get_an_error_each(live, librivox, caplog):
    caplog.set_level(logging.INFO)
    handle, server = live()
    clip = librivox[1]
    pcm = (np.clip(load(clip.path), -1, 1) * 32767).astype("<i2").tobytes()
    url = f"ws://127.0.0.1:{server.port}/v1/listen?encoding=linear16&sample_rate=16000"

    async def main():
        async with websockets.connect(url, additional_headers={"Authorization": f"Token {handle.api_key}"}) as ws:
            for frame in ("{oops", "[]", json.dumps({"type": "Configure"}), json.dumps({"type": None}),
                          "\"" + "x" * 100000 + "\""):
                await ws.send(frame)
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert msg["type"] == "Error", msg
            await ws.send(pcm[:1])  # half a sample: kept for the next frame
            await ws.send(pcm[1:])
            await ws.send(json.dumps({"type": "Finalize"}))
            msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
            assert msg["type"] == "Results" and msg["is_final"] and msg["from_finalize"]
            assert wer(clip.text, msg["channel"]["alternatives"][0]["transcript"]) <= 0.2
        # the browser way: ["token", KEY] as subprotocols
        async with websockets.connect(url, subprotocols=["token", handle.api_key]) as ws:
            assert ws.subprotocol == "token"
            await ws.send(json.dumps({"type": "CloseStream"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "Metadata"

    run(main(), 120)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]
