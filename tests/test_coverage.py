"""Pure rules of issue 9, without the model: coverage, fallback decisions, padding buckets, tail cut."""

from __future__ import annotations

import pytest

from whisper_stt.coverage import (
    bucket_seconds, count_units, coverage_units, covers, min_units, uncovered_edges,
)
from whisper_stt.engine import (
    DecodeFlags, Segment, TranscriptionResult, _drop_repeated_tail, fallback_reason, token_budget,
)


def fast(text: str, confidence: float = -0.3, compression: float = 1.2, language: str = "es") -> TranscriptionResult:
    segs = [Segment(0.0, 10.0, text, confidence, 0.01, compression_ratio=compression)] if text else []
    return TranscriptionResult(text, language, 1.0, 10.0, segs)


def test_units_per_script():
    assert count_units("Hola, ¿qué tal?").letters == 10
    assert count_units("marque 7").letters == 6 + 3  # a digit stands for a spoken number
    assert count_units("안녕하세요. 今日は").cjk == 8
    assert coverage_units("PBX 시스템", "ko") == pytest.approx(3 + 3 / 3)


def test_issue_9_spanish_opening_skipped_is_low_coverage():
    # What the fast decoder returned for the 15 s chunk of the Spanish prompt (~14.8 s of speech) ...
    skipped = "en el sistema operativo Linux para más información."
    assert not covers(skipped, 14.8, "es")
    # ... and what the whole prompt says.
    full = ("Asterisk es una plataforma PBX e IVR de código abierto que corre en el sistema operativo Linux. "
            "Para más información, visite www.asterisk.org")
    assert covers(full, 16.0, "es")


def test_short_speech_is_not_judged_and_cjk_rates_are_lower():
    assert min_units(1.0, "en") == 0.0
    assert covers("Sí.", 1.2, "es")
    assert covers("今日はとてもいい天気です。", 3.0, "ja")
    assert covers("안녕하세요. 오늘은 날씨가 정말 좋습니다.", 4.0, "ko")
    assert not covers("안녕하세요.", 8.0, "ko")
    assert covers("The weather is nice today and we are going to the park.", 4.0, "en")
    assert not covers("The weather.", 6.0, "en")


def test_uncovered_edges():
    speech = [(0.2, 16.0)]
    # words start at 7 s: the first ~7 s of speech are untold
    assert uncovered_edges([(7.0, 9.0), (9.0, 15.9)], speech) == [(0.2, 7.0)]
    assert uncovered_edges([(0.3, 15.9)], speech) == []
    assert uncovered_edges([(0.3, 8.0)], speech) == [(8.0, 16.0)]
    # a long pause before the first word is not speech left untold
    assert uncovered_edges([(6.0, 9.0)], [(0.2, 1.0), (5.8, 9.0)]) == []
    assert uncovered_edges([], speech) == [(0.2, 16.0)]
    assert uncovered_edges([(1.0, 2.0)], []) == []


@pytest.mark.parametrize(
    "result, flags, speech_s, reason",
    [
        (fast("Hola, ¿cómo está usted hoy? Muy bien, gracias."), DecodeFlags(), 3.0, None),
        (fast(""), DecodeFlags(), 3.0, "empty"),
        (fast(""), DecodeFlags(), 0.0, None),  # no voice activity and no text: nothing lost
        (fast("Hola, ¿cómo está usted hoy?"), DecodeFlags(truncated=True), 3.0, "budget"),
        (fast("Hola, ¿cómo está usted hoy?"), DecodeFlags(looped=True), 3.0, "loop"),
        (fast("안녕하세요"), DecodeFlags(broken=True), 1.0, "broken"),
        (fast("Hola, ¿cómo está usted hoy?", confidence=-1.2), DecodeFlags(), 3.0, "confidence"),
        (fast("Hola, ¿cómo está usted hoy?", compression=2.6), DecodeFlags(), 3.0, "compression"),
        (fast("en el sistema operativo Linux para más información."), DecodeFlags(), 14.8, "coverage"),
    ],
)
def test_every_rule_that_could_shorten_text_asks_for_the_careful_decode(result, flags, speech_s, reason):
    assert fallback_reason(result, flags, speech_s, "es") == reason


@pytest.mark.parametrize("clip_s", [0.3, 0.9, 1.0, 2.5, 5.0, 7.99, 8.0, 11.0, 14.0, 20.0, 26.9])
def test_bucket_depends_on_the_clip_only_and_pads_at_least_pad_s(clip_s):
    b = bucket_seconds(clip_s, 2.0)
    assert clip_s + 2.0 <= b <= 30.0
    assert b == bucket_seconds(clip_s, 2.0)
    assert b - clip_s - 2.0 <= max(1.0, 0.2 * (clip_s + 2.0))  # padding stays small


def test_buckets_are_few():
    edges = {bucket_seconds(x / 10, 2.0) for x in range(1, 270)}
    assert len(edges) <= 16, sorted(edges)
    assert bucket_seconds(28.5, 2.0) == 30.5  # too long for a window: the caller takes another path


def test_token_budget_grows_with_the_clip():
    assert token_budget(1.0) < token_budget(10.0)
    assert token_budget(10.0) >= 10 * 12


def test_repeated_tail_with_a_cut_last_word():
    assert _drop_repeated_tail("Harimu. Harimu. Harimu. Harimu. Harimu. Harim").count("Harimu") <= 2
    assert _drop_repeated_tail("I said no no no") == "I said no no no"


def test_stream_filter_keeps_the_first_copy_of_a_looping_segment():
    from whisper_stt.engine import compression_ratio
    from whisper_stt.streaming.session import clean_segments

    loop = "He was not an ill disposed young man. " * 4
    seg = Segment(0.0, 9.0, loop.strip(), -0.3, 0.01, compression_ratio=round(compression_ratio(loop.strip()), 3))
    assert seg.compression_ratio > 2.4
    kept = clean_segments(TranscriptionResult(loop, "en", 1.0, 9.0, [seg]), 9.0)
    assert [s.text for s in kept] == ["He was not an ill disposed young man."]
    junk = Segment(0.0, 9.0, "호끼끼끼끼끼끼끼끼끼끼끼끼끼끼끼끼끼끼끼끼끼끼끼끼끼", -0.9, 0.01, compression_ratio=9.0)
    assert clean_segments(TranscriptionResult(junk.text, "ko", 1.0, 9.0, [junk]), 9.0) == []


def test_a_careful_decode_that_still_loops_keeps_its_first_copy():
    from whisper_stt.engine import _without_loops, collapse_loop

    assert collapse_loop("勤奸奸奸奸奸奸奸奸奸奸奸奸奸奸") == "勤奸"
    assert collapse_loop("He said no no no") == "He said no no no"
    loop = Segment(0.0, 5.0, "勤奸奸奸奸奸奸奸奸奸奸奸奸奸奸奸奸奸奸奸奸奸", -1.5, 0.02, compression_ratio=5.0)
    fine = Segment(5.0, 7.0, "我每天早上喝一杯咖啡", -0.2, 0.01, compression_ratio=1.0)
    result = _without_loops(TranscriptionResult("", "zh", 1.0, 7.0, [loop, fine]))
    assert result.text == "勤奸我每天早上喝一杯咖啡"
