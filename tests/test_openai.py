"""OpenAI-compatible endpoints, driven by the official ``openai`` package against a real uvicorn server,
on the real bundled model with real (LibriVox) and espeak-ng speech."""

from __future__ import annotations

import json
import re

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from openai.types.audio import TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent

from whisper_stt.audio import SAMPLE_RATE, decode_file
from whisper_stt.engine import Segment
from whisper_stt.routes.openai import to_srt, to_vtt

from .speech import encode, wer
from .ws_support import LiveServer

TIMEOUT = 120.0  # per request: a few seconds of speech take ~1-3 s on 2 CPU cores


@pytest.fixture
def live(make_app):
    handle = make_app()
    with LiveServer(handle.app) as server:
        server.handle = handle
        yield server


def client_for(server: LiveServer, api_key: str | None = None) -> OpenAI:
    return OpenAI(
        base_url=f"http://127.0.0.1:{server.port}/v1",
        api_key=api_key if api_key is not None else server.handle.api_key,
        timeout=TIMEOUT,
        max_retries=0,
    )


@pytest.fixture(scope="module")
def long_clip(librivox, tmp_path_factory):
    """Three LibriVox clips with pauses between them (~19 s): several segments, known text."""
    parts = [decode_file(str(c.path)) for c in librivox[:3]]
    gap = np.zeros(SAMPLE_RATE, dtype=np.float32)
    samples = np.concatenate([parts[0], gap, parts[1], gap, parts[2]])
    path = encode(samples, tmp_path_factory.mktemp("openai") / "three", "wav")
    return path, " ".join(c.text for c in librivox[:3]), len(samples) / SAMPLE_RATE


_SRT_TIME = r"(\d{2}):(\d{2}):(\d{2}),(\d{3})"
_VTT_TIME = r"(\d{2}):(\d{2}):(\d{2})\.(\d{3})"


def _seconds(groups) -> float:
    h, m, s, ms = (int(g) for g in groups)
    return h * 3600 + m * 60 + s + ms / 1000


def parse_cues(body: str, vtt: bool) -> list[tuple[float, float, str]]:
    """Strict parser for what the server writes: numbered SRT cues, or WEBVTT and cues."""
    if vtt:
        assert body.startswith("WEBVTT\n\n"), body[:40]
        body = body[len("WEBVTT\n\n"):]
    stamp = _VTT_TIME if vtt else _SRT_TIME
    cues = []
    for i, block in enumerate(body.strip("\n").split("\n\n"), 1):
        lines = block.split("\n")
        if not vtt:
            assert lines[0] == str(i), block
            lines = lines[1:]
        m = re.fullmatch(f"{stamp} --> {stamp}", lines[0])
        assert m, lines[0]
        text = " ".join(lines[1:]).strip()
        assert text, block
        cues.append((_seconds(m.groups()[:4]), _seconds(m.groups()[4:]), text))
    return cues


def check_times(spans: list[tuple[float, float]], duration: float) -> None:
    assert spans
    previous_start = previous_end = 0.0
    for start, end in spans:
        assert 0.0 <= start <= end <= duration + 0.05, (start, end, duration)
        assert start >= previous_start and end >= previous_end, spans
        previous_start, previous_end = start, end


# --- formats ----------------------------------------------------------------------------------------
def test_json_words_on_librivox(live, librivox):
    client = client_for(live)
    refs, hyps = [], []
    for clip in librivox:
        with open(clip.path, "rb") as fh:
            result = client.audio.transcriptions.create(model="whisper-1", file=fh)
        refs.append(clip.text)
        hyps.append(result.text)
    assert wer(" ".join(refs), " ".join(hyps)) <= 0.10, hyps


def test_text_format_with_language_and_prompt(live, librivox):
    clip = librivox[0]
    with open(clip.path, "rb") as fh:
        text = client_for(live).audio.transcriptions.create(
            model="whisper-1", file=fh, response_format="text", language="en",
            prompt="Mr. John Dashwood, Norland, Fanny.",
        )
    assert isinstance(text, str) and text.endswith("\n")
    assert wer(clip.text, text) <= 0.15, text


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitle_formats(live, long_clip, fmt):
    path, reference, duration = long_clip
    with open(path, "rb") as fh:
        body = client_for(live).audio.transcriptions.create(model="whisper-1", file=fh, response_format=fmt)
    cues = parse_cues(body, vtt=fmt == "vtt")
    assert len(cues) >= 2, body  # three sentences with pauses: more than one cue
    check_times([(s, e) for s, e, _ in cues], duration)
    assert wer(reference, " ".join(t for _, _, t in cues)) <= 0.15, body


def test_verbose_json_with_word_timestamps(live, long_clip):
    path, reference, duration = long_clip
    with open(path, "rb") as fh:
        result = client_for(live).audio.transcriptions.create(
            model="whisper-1", file=fh, response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert result.language == "english"
    assert result.task == "transcribe"  # not in the openai type, kept as an extra field
    assert abs(result.duration - duration) < 0.05
    assert wer(reference, result.text) <= 0.15, result.text

    assert result.segments and len(result.segments) >= 2
    for i, seg in enumerate(result.segments):
        assert seg.id == i
        assert seg.avg_logprob <= 0 and 0 <= seg.no_speech_prob <= 1 and seg.compression_ratio > 0
        assert seg.temperature >= 0 and isinstance(seg.seek, int) and isinstance(seg.tokens, list)
    check_times([(s.start, s.end) for s in result.segments], duration)
    assert wer(reference, " ".join(s.text for s in result.segments)) <= 0.15

    assert result.words and len(result.words) >= 30
    check_times([(w.start, w.end) for w in result.words], duration)
    assert all(w.word == w.word.strip() and w.word for w in result.words)
    assert wer(reference, " ".join(w.word for w in result.words)) <= 0.15
    # Each word lies inside one of the segments, and the words cover the speech from start to end.
    for w in result.words:
        assert any(s.start - 0.05 <= w.start and w.end <= s.end + 0.05 for s in result.segments), w
    assert result.words[0].start < 1.0 and result.words[-1].end > duration - 2.0


def test_verbose_json_segments_only_by_default(live, librivox):
    with open(librivox[1].path, "rb") as fh:
        result = client_for(live).audio.transcriptions.create(
            model="whisper-1", file=fh, response_format="verbose_json"
        )
    assert result.segments and not result.words
    assert wer(librivox[1].text, result.text) <= 0.15


# --- translation --------------------------------------------------------------------------------------
# What the base model makes of espeak-ng's voices: Spanish comes out as "Good morning, I would like to
# reserve a table ... this night"; of the French sentence only "Bonjour, je voudrais" survives ("Hello, I
# would like ..."), so French is checked on those words and on the French being gone.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the openai package flags translations
@pytest.mark.parametrize(
    "language, expected, minimum",
    [("es", {"good", "morning", "like", "reserve", "table", "night", "tonight", "two", "people"}, 4),
     ("fr", {"hello", "would", "like"}, 2)],
)
def test_translation_to_english(live, espeak_clips, language, expected, minimum):
    client = client_for(live)
    with open(espeak_clips[language], "rb") as fh:
        result = client.audio.translations.create(model="whisper-1", file=fh, response_format="verbose_json")
    words = set(re.findall(r"[a-z]+", result.text.lower()))
    assert len(words & expected) >= minimum, result.text
    assert not words & {"buenos", "mesa", "para", "noche", "bonjour", "voudrais", "pain", "fromage"}
    assert result.language == "english" and result.segments

    # The same file on /transcriptions stays in the spoken language: the task really switched.
    with open(espeak_clips[language], "rb") as fh:
        spoken = client.audio.transcriptions.create(model="whisper-1", file=fh, response_format="verbose_json")
    assert spoken.language == {"es": "spanish", "fr": "french"}[language]
    assert set(re.findall(r"\w+", spoken.text.lower())) & {"buenos", "mesa", "bonjour", "voudrais", "pain"}


# --- streaming --------------------------------------------------------------------------------------
def test_stream_deltas_arrive_as_windows_are_decoded(live, librivox, tmp_path):
    """Whisper decodes 30 s windows: a ~60 s file gives the first deltas well before the last."""
    import time

    parts = [decode_file(str(c.path)) for c in librivox] * 2
    gap = np.zeros(SAMPLE_RATE, dtype=np.float32)
    samples = np.concatenate([x for p in parts for x in (p, gap)])
    path = encode(samples, tmp_path / "twice", "wav")
    reference = " ".join(c.text for c in librivox * 2)

    events = []
    with open(path, "rb") as fh:
        for event in client_for(live).audio.transcriptions.create(model="whisper-1", file=fh, stream=True):
            events.append((time.monotonic(), event))
    deltas = [(t, e) for t, e in events if isinstance(e, TranscriptionTextDeltaEvent)]
    done_at, done = events[-1]
    assert isinstance(done, TranscriptionTextDoneEvent) and done.type == "transcript.text.done"
    assert len(deltas) >= 4, events  # one per decoded segment
    assert "".join(e.delta for _, e in deltas) == done.text
    assert wer(reference, done.text) <= 0.15, done.text
    assert done_at - deltas[0][0] > 0.3, [t for t, _ in events]  # not all sent at the end


def test_stream_raw_sse_matches_the_plain_request(live, long_clip):
    path, reference, _ = long_clip
    url = f"http://127.0.0.1:{live.port}/v1/audio/transcriptions"
    payloads = []
    with open(path, "rb") as fh, httpx.stream(
        "POST", url, headers={"Authorization": f"Bearer {live.handle.api_key}"},
        files={"file": ("three.wav", fh)}, data={"model": "whisper-1", "stream": "true"}, timeout=TIMEOUT,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line:
                assert line.startswith("data: "), line
                payloads.append(json.loads(line[len("data: "):]))
    assert [p["type"] for p in payloads[:-1]] == ["transcript.text.delta"] * (len(payloads) - 1)
    assert payloads[-1]["type"] == "transcript.text.done"
    text = payloads[-1]["text"]
    assert "".join(p["delta"] for p in payloads[:-1]) == text
    with open(path, "rb") as fh:  # same audio and options: the same text as without streaming
        assert client_for(live).audio.transcriptions.create(model="whisper-1", file=fh).text == text
    assert wer(reference, text) <= 0.15, text


# --- models -----------------------------------------------------------------------------------------
def test_models_list_and_retrieve(live, engine):
    client = client_for(live)
    models = client.models.list()
    assert [m.id for m in models.data] == [engine.model_name]
    assert models.data[0].object == "model"
    assert client.models.retrieve(engine.model_name).id == engine.model_name
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-4o")
    assert err.value.body["code"] == "model_not_found"


# --- errors -----------------------------------------------------------------------------------------
def test_wrong_and_missing_key_are_401_in_openai_shape(live, librivox):
    with pytest.raises(openai.AuthenticationError) as err, open(librivox[0].path, "rb") as fh:
        client_for(live, api_key="sk-" + "0" * 48).audio.transcriptions.create(model="whisper-1", file=fh)
    assert err.value.status_code == 401
    assert err.value.body["type"] == "authentication_error" and err.value.body["code"] == "invalid_api_key"

    r = httpx.get(f"http://127.0.0.1:{live.port}/v1/models", timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "missing_api_key"
    # The original routes keep their own shape and codes.
    r = httpx.get(f"http://127.0.0.1:{live.port}/stats", headers={"X-API-Key": "sk-nope"}, timeout=10)
    assert r.status_code == 403 and set(r.json()) == {"detail"}


def test_bad_input_errors_in_openai_shape(live, librivox, tmp_path):
    client = client_for(live)
    with pytest.raises(openai.BadRequestError) as err, open(librivox[0].path, "rb") as fh:
        client.audio.transcriptions.create(model="whisper-1", file=fh, response_format="xml")
    assert err.value.body["param"] == "response_format"
    assert err.value.body["type"] == "invalid_request_error"

    with pytest.raises(openai.BadRequestError) as err, open(librivox[0].path, "rb") as fh:
        client.audio.transcriptions.create(model="whisper-1", file=fh, language="xx")
    assert err.value.body["param"] == "language"

    garbage = tmp_path / "notes.mp3"
    garbage.write_bytes(b"this is not audio at all " * 100)
    with pytest.raises(openai.BadRequestError) as err, open(garbage, "rb") as fh:
        client.audio.transcriptions.create(model="whisper-1", file=fh)
    assert err.value.body["message"]

    url = f"http://127.0.0.1:{live.port}/v1/audio/transcriptions"
    auth = {"Authorization": f"Bearer {live.handle.api_key}"}
    r = httpx.post(url, headers=auth, data={"model": "whisper-1"}, timeout=10)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "file"
    r = httpx.post(url, headers=auth, files={"file": ("empty.wav", b"")}, data={"model": "whisper-1"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    with open(librivox[0].path, "rb") as fh:
        r = httpx.post(url, headers=auth, files={"file": fh}, data={"temperature": "hot"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"


def test_upload_limit_is_413_in_openai_shape(make_app, librivox):
    handle = make_app(max_upload_mb=0.01)
    with LiveServer(handle.app) as server, open(librivox[0].path, "rb") as fh:
        with pytest.raises(openai.APIStatusError) as err:
            client_for(server, handle.api_key).audio.transcriptions.create(model="whisper-1", file=fh)
    assert err.value.status_code == 413
    assert err.value.body["code"] == "file_too_large" and "limit" in err.value.body["message"]


# --- formatting units ---------------------------------------------------------------------------------
def test_subtitle_timestamps_format():
    segments = [Segment(0.0, 2.5, "Hello there.", -0.1), Segment(3661.042, 3725.999, "Later on.", -0.2)]
    assert to_srt(segments) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n"
        "2\n01:01:01,042 --> 01:02:05,999\nLater on.\n"
    )
    assert to_vtt(segments) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n"
        "01:01:01.042 --> 01:02:05.999\nLater on.\n"
    )
    assert to_vtt([]) == "WEBVTT\n\n" and to_srt([]) == ""


def test_stream_closed_by_the_client_frees_the_model_slot(live, engine, librivox, tmp_path):
    """A client that hangs up mid-stream: decoding stops after the current window, nothing leaks."""
    parts = [decode_file(str(c.path)) for c in librivox] * 3
    samples = np.concatenate(parts)  # ~85 s: three windows
    path = encode(samples, tmp_path / "long", "wav")
    url = f"http://127.0.0.1:{live.port}/v1/audio/transcriptions"
    completed = engine.completed
    with open(path, "rb") as fh, httpx.stream(
        "POST", url, headers={"Authorization": f"Bearer {live.handle.api_key}"},
        files={"file": ("long.wav", fh)}, data={"model": "whisper-1", "stream": "true"}, timeout=TIMEOUT,
    ) as response:
        first = next(line for line in response.iter_lines() if line.startswith("data: "))
        assert '"transcript.text.delta"' in first
    # Hung up after the first window; the rest is not decoded and the slot is free again.
    assert live.wait_for(lambda: engine.active == 0 and engine.queued == 0, timeout=30)
    assert engine.completed == completed  # the abandoned call is not counted as a transcription
    with open(librivox[0].path, "rb") as fh:
        assert "Dashwood" in client_for(live).audio.transcriptions.create(model="whisper-1", file=fh).text


def test_unhandled_error_on_v1_is_an_openai_shaped_500():
    """A bug (not the client's fault) still answers in OpenAI's shape on /v1/, and {"detail"} elsewhere."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from whisper_stt.routes.openai import OpenAIErrorMiddleware

    app = FastAPI()

    @app.get("/v1/boom")
    @app.get("/boom")
    async def boom():
        raise RuntimeError("bug")

    app.add_middleware(OpenAIErrorMiddleware)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/v1/boom")
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "server_error" and "bug" not in r.text
        other = c.get("/boom")  # outside /v1/ nothing is rewritten
        assert other.status_code == 500 and other.text == "Internal Server Error"
