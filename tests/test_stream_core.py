"""The streaming core's rules, driven with synthetic VAD decisions and a fake recogniser: no model, no
socket, milliseconds per test. Recognition itself is tested with the real model elsewhere
(test_ws_streaming.py, test_realtime.py, test_deepgram.py).

Synthetic audio: a "word" is a run of one constant sample value above 0.5 (the value names the word),
silence is zeros. The fake VAD calls a 32 ms window speech when its mean magnitude is above 0.5; the fake
recogniser reads the runs back as words.
"""

from __future__ import annotations

import asyncio
from typing import Optional

import numpy as np
import pytest

from whisper_stt.engine import Segment, TranscriptionResult, Word
from whisper_stt.streaming import events as ev
from whisper_stt.streaming.codecs import ALAW, ULAW, PCMStream, encode_alaw, encode_ulaw, resample
from whisper_stt.streaming.deltas import align, stabilise
from whisper_stt.streaming.session import SessionConfig, StreamingPolicy, StreamingSession
from whisper_stt.streaming.vad import WINDOW

SR = 16000
VOCAB = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
         "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango"]
WORD_S = 0.4


def words(*ids: int, word_s: float = WORD_S) -> np.ndarray:
    return np.concatenate([np.full(int(word_s * SR), 0.6 + i / 100, dtype=np.float32) for i in ids])


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def read_words(audio: np.ndarray, min_s: float = 0.2) -> list[tuple[str, float, float]]:
    """Runs of one value above 0.5, at least ``min_s`` long -> (word, start s, end s)."""
    out = []
    i = 0
    while i < len(audio):
        v = audio[i]
        j = i
        while j < len(audio) and audio[j] == v:
            j += 1
        if v > 0.5 and (j - i) >= min_s * SR:
            out.append((VOCAB[int(round((v - 0.6) * 100))], i / SR, j / SR))
        i = j
    return out


class FakeVAD:
    def __init__(self) -> None:
        self.rest = np.zeros(0, dtype=np.float32)

    def process(self, samples: np.ndarray) -> np.ndarray:
        audio = np.concatenate([self.rest, samples])
        n = len(audio) // WINDOW
        self.rest = audio[n * WINDOW:]
        windows = audio[: n * WINDOW].reshape(n, WINDOW)
        return (np.abs(windows).mean(axis=1) > 0.5).astype(np.float32)

    def reset(self) -> None:
        self.rest = np.zeros(0, dtype=np.float32)


class FakeRecogniser:
    """Finals read every word; partials too, except a word still being spoken (under 0.2 s) is left out.
    ``final_edit`` rewrites final texts (a final that words things differently from the partials)."""

    def __init__(self, final_edit=None) -> None:
        self.final_edit = final_edit
        self.final_calls: list[float] = []
        self.partial_calls: list[float] = []

    @staticmethod
    def _result(found, duration: float, with_words: bool = True) -> TranscriptionResult:
        text = " ".join(w for w, _, _ in found)
        seg_words = [Word(s, e, " " + w, 0.9) for w, s, e in found] if with_words else None
        segments = [Segment(0.0, duration, text, -0.1, words=seg_words)] if text else []
        return TranscriptionResult(text, "en", 0.99, duration, segments)

    async def final(self, key, audio, language):
        self.final_calls.append(len(audio) / SR)
        found = read_words(audio)
        if self.final_edit:
            found = self.final_edit(found)
        return self._result(found, len(audio) / SR)

    async def partial(self, key, audio, language) -> Optional[TranscriptionResult]:
        self.partial_calls.append(len(audio) / SR)
        return self._result(read_words(audio), len(audio) / SR, with_words=False)

    def forget(self, key) -> None:
        pass


async def _offload(fn, *args):
    return fn(*args)


class Harness:
    def __init__(self, *, recogniser=None, policy=None, **config) -> None:
        self.events: list = []
        self.recogniser = recogniser or FakeRecogniser()
        cfg = SessionConfig(**{"language": "en", "silence_threshold": 1.0, **config})

        async def emit(event):
            self.events.append(event)

        self.session = StreamingSession(self.recogniser, cfg, emit, _offload, policy=policy, vad=FakeVAD())

    async def feed(self, audio: np.ndarray, chunk_s: float = 0.1) -> None:
        """Stream in chunks, letting the core catch up (and previews finish) after each one."""
        step = int(chunk_s * SR)
        for pos in range(0, len(audio), step):
            await self.session.feed_samples(audio[pos:pos + step])
            await self.session.settle()

    def of(self, kind) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def run(coro_fn, **kwargs):
    async def main():
        h = Harness(**kwargs)
        h.session.start()
        try:
            await coro_fn(h)
        finally:
            await h.session.close()
        return h

    return asyncio.run(asyncio.wait_for(main(), 30))


# --- endpointing ----------------------------------------------------------------------------------
def test_utterance_opens_on_speech_and_ends_after_the_silence_threshold():
    audio = np.concatenate([silence(1.0), words(0, 1, 2, 3), silence(1.5)])

    async def scenario(h):
        await h.feed(audio)

    h = run(scenario)
    kinds = [type(e).__name__ for e in h.events if not isinstance(e, ev.PartialText)]
    assert kinds == ["SpeechStarted", "SpeechStopped", "Committed", "FinalText"]
    started, stopped = h.of(ev.SpeechStarted)[0], h.of(ev.SpeechStopped)[0]
    # the pre-roll is kept before the first speech window (whole windows)
    pre_roll = int(StreamingPolicy().pre_roll_s * SR) // WINDOW * WINDOW / SR
    assert started.start == pytest.approx(1.0 - pre_roll, abs=WINDOW / SR)
    assert stopped.reason == "silence"
    final = h.of(ev.FinalText)[0]
    assert final.text == "alpha bravo charlie delta"
    # the final's audio ends post_pad (0.35 s) after the last speech
    assert final.end == pytest.approx(1.0 + 4 * WORD_S + 0.35, abs=0.07)


def test_a_click_opens_no_utterance():
    audio = np.concatenate([silence(0.5), np.full(WINDOW * 2, 0.9, np.float32), silence(2.0)])

    async def scenario(h):
        await h.feed(audio)

    h = run(scenario)
    assert h.events == []


def test_two_utterances_and_silence_shorter_than_the_threshold_keeps_one_open():
    audio = np.concatenate([words(0, 1), silence(0.6), words(2, 3), silence(1.2), words(4, 5), silence(1.2)])

    async def scenario(h):
        await h.feed(audio)

    h = run(scenario)
    finals = h.of(ev.FinalText)
    assert [f.text for f in finals] == ["alpha bravo charlie delta", "echo foxtrot"]
    assert [f.utterance_id for f in finals] == [1, 2]


class GatedFinals(FakeRecogniser):
    """Finals wait for ``gate``; counts how many started, were withdrawn (cancelled) and finished."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.started = self.withdrawn = self.finished = 0

    async def final(self, key, audio, language):
        self.started += 1
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.withdrawn += 1
            raise
        self.finished += 1
        return await super().final(key, audio, language)


def test_the_session_does_not_wait_for_a_speculative_final_and_withdraws_a_stale_one():
    # a 0.7 s pause (past the 0.5 s speculation point, short of the 1.0 s threshold), then more speech
    async def scenario(h):
        await h.feed(np.concatenate([silence(0.3), words(0, 1), silence(0.7)]))
        assert h.recogniser.started == 1  # the speculative final is in the lane, not finished ...
        await h.feed(words(2, 3))  # ... and the session goes on taking audio meanwhile
        assert h.recogniser.withdrawn == 1  # speech resumed: the stale speculation was withdrawn
        assert h.of(ev.FinalText) == []
        h.recogniser.gate.set()
        await h.feed(silence(1.5))

    h = run(scenario, recogniser=GatedFinals())
    assert [f.text for f in h.of(ev.FinalText)] == ["alpha bravo charlie delta"]
    assert h.recogniser.finished == 1  # one final decoded: the speculation over the whole utterance


def test_a_speculative_final_that_fails_is_decoded_again_at_the_threshold():
    class FailsFirst(FakeRecogniser):
        calls = 0

        async def final(self, key, audio, language):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("lane hiccup")
            return await super().final(key, audio, language)

    async def scenario(h):
        await h.feed(np.concatenate([words(0, 1), silence(1.5)]))

    h = run(scenario, recogniser=FailsFirst())
    assert [f.text for f in h.of(ev.FinalText)] == ["alpha bravo"]
    assert h.recogniser.calls == 2 and h.of(ev.Failed) == []


# --- partials, stability, deltas -----------------------------------------------------------------
def test_partials_grow_stable_words_and_deltas_add_up_to_the_item():
    audio = np.concatenate([silence(0.3), words(*range(8)), silence(1.2)])

    async def scenario(h):
        await h.feed(audio)

    h = run(scenario)
    partials = h.of(ev.PartialText)
    assert len(partials) >= 3
    stable_seen: list[str] = []
    for p in partials:
        assert p.stable[: len(stable_seen)] == stable_seen  # stable words are never taken back
        stable_seen = p.stable
        assert p.text == " ".join(p.stable + p.unstable)
    deltas = "".join(p.delta for p in partials)
    assert deltas, "stable words became deltas while speech went on"
    stopped_at = h.events.index(h.of(ev.SpeechStopped)[0])
    assert any(isinstance(e, ev.PartialText) and e.delta for e in h.events[:stopped_at])
    final = h.of(ev.FinalText)[0]
    assert deltas + final.delta == final.item_text == final.text


def test_deltas_stay_append_only_when_the_final_words_it_differently():
    def reword(found):  # the final hears word 1 differently and adds nothing else
        return [("BRAVO-ish" if w == "bravo" else w, s, e) for w, s, e in found]

    audio = np.concatenate([silence(0.3), words(*range(8)), silence(1.2)])

    async def scenario(h):
        await h.feed(audio)

    h = run(scenario, recogniser=FakeRecogniser(final_edit=reword))
    deltas = "".join(p.delta for p in h.of(ev.PartialText))
    final = h.of(ev.FinalText)[0]
    assert "bravo" in deltas  # already sent: stays
    assert deltas + final.delta == final.item_text
    assert final.item_text.split() == [VOCAB[i] for i in range(8)]  # nothing repeated or dropped
    assert final.text.split()[1] == "BRAVO-ish"  # the original protocol's final is the decoding as is


def test_stabilise_holds_back_the_edge_word():
    stable, unstable = stabilise([], ["a", "b", "c"], ["a", "b", "c", "d"])
    assert stable == ["a", "b"] and unstable == ["c", "d"]
    stable, unstable = stabilise(["a", "b"], ["a", "b", "c", "d"], ["a", "x", "c", "d", "e"])
    assert stable == ["a", "b"]  # never taken back, even when the new hypothesis disagrees


def test_align_finds_where_sent_words_end():
    assert align(["the", "cat"], ["The", "cat", "sat."]).end == 2
    assert align(["the", "cat"], ["a", "cat", "sat"]).end == 2  # substitution
    assert align([], ["x"]).end == 0
    cut = align(["one", "two", "three", "four"], ["one", "two"])  # a piece ended before the last deltas
    assert cut.end == 2 and cut.overflow == ["three", "four"]


# --- monologues -----------------------------------------------------------------------------------
def test_a_monologue_is_cut_at_its_longest_pause_without_losing_or_repeating_words():
    policy = StreamingPolicy(max_piece_s=5.0, min_piece_s=1.0)
    audio = np.concatenate([words(0, 1, 2, 3), silence(0.25), words(4, 5, 6, 7, 8), silence(0.1),
                            words(9, 10, 11), silence(1.3)])

    async def scenario(h):
        await h.feed(audio)

    h = run(scenario, policy=policy)
    finals = h.of(ev.FinalText)
    assert [f.reason for f in finals] == ["max_length", "silence"]
    assert finals[0].text == "alpha bravo charlie delta"  # cut inside the longer pause
    assert " ".join(f.text for f in finals).split() == VOCAB[:12]
    # delta-based protocols: each item's deltas add up to it, and no word is sent twice
    for f in finals:
        sent = "".join(p.delta for p in h.of(ev.PartialText) if p.utterance_id == f.utterance_id)
        assert sent + f.delta == f.item_text
    assert " ".join(f.item_text for f in finals).split() == VOCAB[:12]
    starts = h.of(ev.SpeechStarted)
    assert [s.utterance_id for s in starts] == [1, 2]  # the next piece opens right away


# --- commands -------------------------------------------------------------------------------------
def test_stop_flushes_the_open_utterance_and_clear_drops_it():
    async def scenario(h):
        await h.feed(np.concatenate([silence(0.2), words(0, 1, 2)]))
        h.session.clear()
        await h.session.settle()
        await h.feed(np.concatenate([silence(0.2), words(3, 4)]))
        h.session.stop()
        await h.session.settle()

    h = run(scenario)
    finals = h.of(ev.FinalText)
    assert [f.text for f in finals] == ["delta echo"] and finals[0].reason == "stop"
    assert [n.state for n in h.of(ev.Notice)] == ["cleared", "stopped"]


def test_commit_ends_the_open_utterance_or_says_there_is_nothing():
    async def scenario(h):
        h.session.commit()
        await h.session.settle()
        await h.feed(np.concatenate([silence(0.2), words(0, 1, 2)]))
        h.session.commit()
        await h.session.settle()

    h = run(scenario)
    assert [p.code for p in h.of(ev.Problem)] == ["COMMIT_EMPTY"]
    assert [(f.text, f.reason) for f in h.of(ev.FinalText)] == [("alpha bravo charlie", "commit")]


def test_manual_mode_keeps_everything_until_commit():
    async def scenario(h):
        h.session.commit()
        await h.session.settle()
        await h.feed(np.concatenate([words(0, 1), silence(2.5), words(2)]))
        await h.session.settle()
        assert not h.of(ev.FinalText)  # no endpointing, no previews
        h.session.commit()
        await h.session.settle()
        await h.feed(words(3))
        h.session.commit()
        await h.session.settle()

    h = run(scenario, endpointing=False)
    assert not h.of(ev.SpeechStarted) and not h.of(ev.PartialText)
    assert [p.code for p in h.of(ev.Problem)] == ["COMMIT_EMPTY"]
    finals = h.of(ev.FinalText)
    assert [f.text for f in finals] == ["alpha bravo charlie", "delta"]
    assert finals[1].start == pytest.approx(2 * WORD_S + 2.5 + WORD_S, abs=0.01)
    assert [c.utterance_id for c in h.of(ev.Committed)] == [1, 2]


def test_noise_gets_an_empty_final_so_delta_protocols_can_close_the_item():
    audio = np.concatenate([silence(0.2), np.full(int(0.15 * SR), 0.9, np.float32), silence(1.3)])

    async def scenario(h):
        await h.feed(audio, chunk_s=0.05)

    h = run(scenario)
    assert len(h.of(ev.SpeechStarted)) == 1
    final = h.of(ev.FinalText)[0]
    assert final.text == "" and final.item_text == ""


def test_word_times_are_stream_times():
    audio = np.concatenate([silence(1.0), words(0, 1, 2), silence(1.2)])

    async def scenario(h):
        await h.feed(audio)

    h = run(scenario, word_timestamps=True)
    final = h.of(ev.FinalText)[0]
    assert [w.word for w in final.words] == ["alpha", "bravo", "charlie"]
    assert final.words[0].start == pytest.approx(1.0, abs=0.001)
    assert final.words[-1].end == pytest.approx(1.0 + 3 * WORD_S, abs=0.001)
    ends = [w.end for w in final.words]
    assert ends == sorted(ends)


def test_buffer_cap_is_a_problem_not_a_crash():
    async def scenario(h):
        await h.session.feed_samples(words(0, 1, 2, 3, 4, 5, 6, 7, 8, 9))  # 4 s into a 1 s buffer
        await h.session.settle()

    h = run(scenario, max_buffer_s=1.0)
    assert [p.code for p in h.of(ev.Problem)] == ["BUFFER_FULL"]


def test_a_failing_recogniser_fails_the_utterance_and_the_session_goes_on():
    class Flaky(FakeRecogniser):
        async def final(self, key, audio, language):
            if read_words(audio)[0][0] == "alpha":
                raise RuntimeError("model fell over")
            return await super().final(key, audio, language)

    async def scenario(h):
        await h.feed(np.concatenate([words(0, 1), silence(1.2), words(2, 3), silence(1.2)]))

    h = run(scenario, recogniser=Flaky())
    assert [f.utterance_id for f in h.of(ev.Failed)] == [1]
    assert [f.text for f in h.of(ev.FinalText)] == ["charlie delta"]


# --- audio codecs ---------------------------------------------------------------------------------
def test_g711_tables_match_the_standard():
    assert ULAW[0xFF] == 0 and ULAW[0x7F] == 0
    assert ULAW[0x00] * 32768 == -32124 and ULAW[0x80] * 32768 == 32124
    assert ALAW[0xD5] * 32768 == 8 and ALAW[0x55] * 32768 == -8
    assert ALAW[0xAA] * 32768 == 32256 and ALAW[0x2A] * 32768 == -32256
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.float32)
    for enc, fn in (("mulaw", encode_ulaw), ("alaw", encode_alaw)):
        assert np.abs(PCMStream(enc, 8000).decode(fn(tone)) - tone).max() < 0.02


@pytest.mark.parametrize("rate", [8000, 24000, 44100])
def test_streamed_resampling_keeps_length_and_pitch(rate):
    tone = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(rate) / rate)).astype(np.float32)
    data = (tone * 32767).astype("<i2").tobytes()
    stream = PCMStream("pcm16", rate)
    pieces = [stream.feed(data[i:i + 999]) for i in range(0, len(data), 999)]  # odd sizes split samples
    out = np.concatenate(pieces + [stream.flush()])
    assert abs(len(out) - SR) <= 2
    spectrum = np.abs(np.fft.rfft(out[2000:14000] * np.hanning(12000)))
    assert abs(np.argmax(spectrum) * SR / 12000 - 1000) < 5
    whole = resample(tone, rate)
    assert abs(len(whole) - SR) <= 2
