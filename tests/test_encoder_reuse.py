"""The short-window batch's encoder output reused by the edge check (issue 15): same word timings as a
second encoder pass over the same clip, and the same verified finals."""

from __future__ import annotations

from whisper_stt.audio import decode_file
from whisper_stt.engine import careful, short_window
from whisper_stt.engine.window import SHORT_PAD_S

from .speech import wer


def test_reused_encoder_output_gives_the_same_word_spans_and_finals(engine, librivox):
    model = engine.model
    clips = [decode_file(str(c.path)) for c in librivox[:4]]
    # two clips per bucket at least: the halves of a clip share a bucket with each other's neighbours
    items = [(a, "en") for a in clips] + [(a[: len(a) // 2], "en") for a in clips]
    encodings: list = [None] * len(items)
    results, flags = short_window.short_windows(model, items, 5, SHORT_PAD_S, encodings)
    assert all(e is not None for e in encodings)
    aligned = 0
    for (audio, _), result, encoded in zip(items, results, encodings):
        fresh = careful.word_spans(model, audio, result)
        reused = careful.word_spans(model, audio, result, encoded)
        assert reused == fresh
        aligned += len(fresh) > 1
    assert aligned >= 4  # the check really aligned words (clips long enough), not only the 0..end stub
    # the verified finals: as with a second encoder pass (the way before), and right
    finals = short_window.batch_blocking(model, items[:4], 5)
    before = [careful.verified(model, audio, lang, results[i], flags[i], 5) for i, (audio, lang) in enumerate(items[:4])]
    assert [f.text for f in finals] == [b.text for b in before]
    assert sum(wer(c.text, f.text) for c, f in zip(librivox[:4], finals)) / 4 <= 0.1


def test_partials_keep_no_encoder_output(engine, librivox):
    # greedy partials are not verified: nothing is kept for them (no memory held past the batch)
    audio = decode_file(str(librivox[0].path))
    encodings: list = [None]
    short_window.short_windows(engine.model, [(audio, "en")], 1, SHORT_PAD_S, None)
    assert encodings == [None]
    assert short_window.batch_blocking(engine.model, [(audio, "en")], 1)[0].text
