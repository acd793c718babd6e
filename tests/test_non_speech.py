"""Nothing from non-speech in any language setting, over REST and streaming (issue 9, part 4); CJK text is
never broken (no U+FFFD, no lone jamo), word timestamps included.

Non-speech: 60 s of silence, room noise with mains hum, music (Asterisk's music on hold from Debian's
asterisk-moh-opsound-wav when installed, else synthesized chords), DTMF digits, breathing-like noise and
keyboard clicks. One app and one live server serve the whole matrix.
"""

from __future__ import annotations


import numpy as np
import pytest

from whisper_stt.audio import SAMPLE_RATE, decode_file

from .multilingual import ESPEAK_SETS, ESPEAK_VOICES
from .speech import have_espeak, wav_bytes
from .ws_support import LiveServer, run, silence, stream

LANGUAGES = ["", "ko", "ja", "zh", "en"]
MOH = "/usr/share/asterisk/moh/macroform-cold_day.wav"


def _bandpass(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    spec[(freqs < lo) | (freqs > hi)] = 0
    return np.fft.irfft(spec, len(x)).astype(np.float32)


def _norm(x: np.ndarray, peak: float) -> np.ndarray:
    return (x / (np.max(np.abs(x)) + 1e-9) * peak).astype(np.float32)


def _music(rng) -> np.ndarray:
    try:
        audio = decode_file(MOH)
        return audio[5 * SAMPLE_RATE: 17 * SAMPLE_RATE]
    except Exception:  # package not installed: chords with a melody
        t = np.arange(12 * SAMPLE_RATE) / SAMPLE_RATE
        notes = [261.6, 329.6, 392.0, 440.0, 349.2, 293.7]
        out = np.zeros_like(t)
        for k, f in enumerate(notes * 4):
            a, b = int(k * 0.5 * SAMPLE_RATE), int((k * 0.5 + 0.9) * SAMPLE_RATE)
            seg = t[a:b] - t[a]
            out[a:b] += np.sin(2 * np.pi * f * seg) * np.exp(-2 * seg) + 0.5 * np.sin(2 * np.pi * f / 2 * seg)
        return _norm(out, 0.5)


def _clips() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(9)
    n = 8 * SAMPLE_RATE
    t = np.arange(n) / SAMPLE_RATE
    white = rng.standard_normal(n)
    pink = np.cumsum(white)
    pink = _bandpass(pink - pink.mean(), 40, 6000)
    room = _norm(pink, 0.05) + 0.02 * np.sin(2 * np.pi * 50 * t).astype(np.float32)
    dtmf = []
    low, high = [697, 770, 852, 941], [1209, 1336, 1477]
    for k in range(24):
        tt = np.arange(int(0.18 * SAMPLE_RATE)) / SAMPLE_RATE
        dtmf += [0.25 * (np.sin(2 * np.pi * low[k % 4] * tt) + np.sin(2 * np.pi * high[k % 3] * tt)), np.zeros(int(0.15 * SAMPLE_RATE))]
    envelope = np.clip(np.sin(2 * np.pi * t / 3.2), 0, None) ** 2  # one breath every 3.2 s
    breathing = _norm(_bandpass(white, 300, 2500) * envelope, 0.3)
    clicks = np.zeros(n)
    for pos in np.sort(rng.uniform(0, 7.9, 60)):
        a = int(pos * SAMPLE_RATE)
        k = np.arange(240)
        clicks[a:a + 240] += rng.standard_normal(240) * np.exp(-k / 30) * rng.uniform(0.2, 0.6)
    return {
        "silence_60s": silence(60.0),
        "room_noise": room.astype(np.float32),
        "music": _music(rng),
        "dtmf": np.concatenate(dtmf).astype(np.float32),
        "breathing": breathing,
        "keyboard": clicks.astype(np.float32),
    }


@pytest.fixture(scope="module")
def clips():
    return _clips()


@pytest.fixture(scope="module")
def live(engine, tmp_path_factory):
    from whisper_stt.app import create_app
    from whisper_stt.config import Settings
    from whisper_stt.keys import KeyStore

    from .conftest import MODELS_DIR

    tmp = tmp_path_factory.mktemp("nonspeech")
    settings = Settings(key_file=tmp / "keys.json", debug_dir=tmp / "debug", models_dir=MODELS_DIR, no_auth=True,
                        jobs_dir=tmp / "jobs")
    app = create_app(settings, engine, KeyStore.open(settings.key_file))
    with LiveServer(app) as server:
        yield server


@pytest.mark.parametrize("language", LANGUAGES)
def test_rest_gives_no_text_from_non_speech(live, clips, language):
    import httpx

    base = f"http://127.0.0.1:{live.port}"
    texts = {}
    for name, audio in clips.items():
        r = httpx.post(f"{base}/transcribe", files={"file": ("n.wav", wav_bytes(audio), "audio/wav")},
                       data={"language": language}, timeout=300)
        assert r.status_code == 200, r.text
        texts[name] = r.json()["text"]
    assert all(t == "" for t in texts.values()), texts


@pytest.mark.parametrize("language", LANGUAGES)
def test_stream_gives_no_text_from_non_speech(live, clips, language):
    audio = np.concatenate([np.concatenate([clip, silence(1.0)]) for clip in clips.values()])
    start = {"command": "start", "audio_format": "pcm16", "language": language}
    received = run(stream(live.url, audio, start=start, chunk_s=0.5))
    said = [m for kind in ("final", "partial") for m in received.of(kind)]
    assert said == [], said


def _broken(text: str) -> bool:
    lone_jamo = any(0x1100 <= ord(c) <= 0x11FF or 0x3130 <= ord(c) <= 0x318F for c in text)
    return "\ufffd" in text or lone_jamo


@pytest.mark.parametrize("language", ["ko", "ja", "zh"])
def test_cjk_text_and_word_timestamps_are_whole_characters(live, language, tmp_path):
    import subprocess

    import httpx

    if not have_espeak():
        pytest.skip("espeak-ng is not installed (run ./run_tests.sh)")
    parts = []
    # The sentences the base model understands from espeak-ng (others fall back to slow sampling).
    sentences = ESPEAK_SETS[language][2:4] if language == "zh" else ESPEAK_SETS[language][:2]
    for k, (text, spoken) in enumerate(sentences):
        path = tmp_path / f"{k}.wav"
        voice = ESPEAK_VOICES.get(language, language)
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(path), spoken or text], check=True,
                       capture_output=True, timeout=60)
        parts += [decode_file(str(path)), silence(0.6)]
    audio = np.concatenate(parts)
    base = f"http://127.0.0.1:{live.port}"
    r = httpx.post(f"{base}/v1/audio/transcriptions",
                   files={"file": ("s.wav", wav_bytes(audio), "audio/wav")},
                   data={"model": "whisper-1", "language": language, "response_format": "verbose_json",
                         "timestamp_granularities[]": "word"}, timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] and not _broken(body["text"]), body["text"]
    words = body.get("words") or []
    assert words, body
    assert not any(_broken(w["word"]) for w in words), words
    r = httpx.post(f"{base}/transcribe", files={"file": ("s.wav", wav_bytes(audio), "audio/wav")},
                   data={"language": language}, timeout=300)
    assert r.status_code == 200 and r.json()["text"] and not _broken(r.json()["text"]), r.text
    received = run(stream(live.url, audio, start={"command": "start", "audio_format": "pcm16", "language": language}))
    texts = [m["text"] for kind in ("final", "partial") for m in received.of(kind)]
    assert not any(_broken(t) for t in texts), texts
    if language != "zh":  # espeak-ng's Mandarin is barely intelligible to the base model
        assert received.of("final"), received.messages
