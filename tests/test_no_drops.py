"""No silent drops (issue 9, part 1): real speech that used to come back shorter, one test per rule.

Each rule that could turn speech into less text now sends the clip to the careful decode (faster-whisper's
temperature-fallback decode). The recordings are Asterisk's telephone prompts (Debian packages
asterisk-core-sounds-{es,it}-wav with their transcripts) and LibriVox clips (pocketsphinx-testdata).
"""

from __future__ import annotations

import numpy as np
import pytest

import whisper_stt.engine.careful as careful_module
import whisper_stt.engine.window as window_module
from whisper_stt.audio import SAMPLE_RATE, decode_file
from whisper_stt.engine import DecodeFlags, Segment, TranscriptionResult

from .multilingual import asterisk_prompt, error_rate, matched
from .speech import wer
from .ws_support import LiveServer, run, silence, stream


def _prompt(language: str, name: str):
    rec = asterisk_prompt(language, name)
    if rec is None:
        pytest.skip(f"Debian package asterisk-core-sounds-{language} / -{language}-wav is not installed "
                    "(run ./run_tests.sh)")
    return rec, decode_file(str(rec.path))


@pytest.fixture(scope="module")
def spanish():
    """16 s, continuous speech, opening with a product name the model finds hard (issue 9's example)."""
    return _prompt("es", "demo-moreinfo")


@pytest.fixture(scope="module")
def italian():
    return _prompt("it", "dir-intro")


def _opening_heard(text: str) -> bool:
    text = text.lower()
    return "código abierto" in text or "codigo abierto" in text


def test_spanish_prompt_over_rest_keeps_its_opening_and_matches_faster_whisper(engine, client, app_handle, spanish):
    """It used to come back as its second half only: the 15 s VAD cap cut the speech inside a word and
    the fast decoder skipped the chunk's opening (error 0.71 against faster-whisper's 0.33)."""
    rec, audio = spanish
    with open(rec.path, "rb") as f:
        r = client.post("/transcribe", files={"file": ("p.wav", f, "audio/wav")}, data={"language": "es"},
                        headers=app_handle.auth)
    assert r.status_code == 200, r.text
    ours = r.json()["text"]
    segments, _ = engine.model.transcribe(audio, language="es", beam_size=5)
    plain = "".join(s.text for s in segments)
    assert _opening_heard(ours), ours
    assert error_rate(rec.text, ours, "es") <= error_rate(rec.text, plain, "es") + 0.05, (ours, plain)
    assert len(matched(rec.text, plain, "es") - matched(rec.text, ours, "es")) <= 1, (ours, plain)


def test_chunk_whose_opening_the_decoder_skips_is_decoded_again(engine, spanish):
    """The exact chunk the old 15 s cap produced: the fast decode returns only its second half (too few
    letters for the speech: coverage rule), the careful decode skips it too (its word timings show it:
    edge rule), and the untold opening is decoded on its own."""
    _, audio = spanish
    chunk = audio[int(0.152 * SAMPLE_RATE): int(14.96 * SAMPLE_RATE)]
    before = engine.fallbacks.get("coverage", 0)
    result = engine._batch_blocking([(chunk, "es")], 5)[0]
    assert engine.fallbacks.get("coverage", 0) == before + 1
    assert _opening_heard(result.text), result.text
    assert "sistema operativo" in result.text.lower(), result.text
    assert result.segments and result.segments[0].start < 1.0


def test_fast_text_whose_words_leave_the_opening_untold_is_decoded_again(engine, spanish, monkeypatch):
    """Edge rule on the fast path: a text long enough for the speech (coverage passes) but whose words, by
    Whisper's alignment, start seconds after the speech does goes to the careful decode."""
    _, audio = spanish
    chunk = audio[int(0.152 * SAMPLE_RATE): int(14.96 * SAMPLE_RATE)]
    text = "en el sistema operativo Linux para más información."  # what the fast decoder returned
    duration = len(chunk) / SAMPLE_RATE
    segment = Segment(0.0, duration, text, -0.7, 0.01, compression_ratio=1.1)
    fast = TranscriptionResult(text, "es", 1.0, duration, [segment])
    monkeypatch.setattr(careful_module, "covers", lambda *args: True)  # only the word timings can tell
    before = engine.fallbacks.get("edges", 0)
    result = engine._verified(chunk, "es", fast, DecodeFlags(), 5)
    assert engine.fallbacks.get("edges", 0) == before + 1
    assert _opening_heard(result.text), result.text


def test_token_budget_used_up_falls_back(engine, italian, monkeypatch):
    """A clip whose text needs more tokens than the fast path allows is not cut at the budget."""
    rec, audio = italian
    monkeypatch.setattr(window_module, "TOKENS_PER_S", 1)
    result = engine._batch_blocking([(audio, "it")], 5)[0]
    assert error_rate(rec.text, result.text, "it") <= 0.35, result.text
    assert "tasto" in result.text.lower(), result.text  # the end of the prompt


def test_real_repeated_speech_is_not_cut_as_a_loop(engine, librivox):
    """The repeated-tail rule (meant for decoder loops) used to cut a speaker who says the same sentence
    three times down to one copy."""
    clip = librivox[1]
    once = decode_file(str(clip.path))
    gap = silence(0.3)
    thrice = np.concatenate([once, gap, once, gap, once])
    result = engine._batch_blocking([(thrice, "en")], 5)[0]
    assert wer(" ".join([clip.text] * 3), result.text) <= 0.25, result.text


@pytest.mark.parametrize("which", ["spanish", "italian"])
def test_stream_keeps_the_opening(make_app, request, which):
    """The real-time stream lost the same openings (Spanish 0.58/0.33, Italian 0.33 against 0.15)."""
    rec, audio = request.getfixturevalue(which)
    handle = make_app(no_auth=True)
    padded = np.concatenate([silence(0.5), audio, silence(3.0)])
    with LiveServer(handle.app) as server:
        received = run(stream(server.url, padded,
                              start={"command": "start", "audio_format": "pcm16", "language": rec.language}))
    text = received.finals_text()
    limit = {"es": 0.45, "it": 0.25}[rec.language]
    assert error_rate(rec.text, text, rec.language) <= limit, text
    if rec.language == "es":
        assert _opening_heard(text), text
    else:
        assert text.lower().startswith("benvenuto"), text

