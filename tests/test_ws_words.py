"""Word timestamps in /ws/transcribe finals (``"word_timestamps": true`` in ``start``), real model."""

from __future__ import annotations

import pytest

from .speech import wer
from .ws_support import LiveServer, concat_with_pauses, load, run, stream


@pytest.fixture
def server(make_app):
    handle = make_app(no_auth=True)
    with LiveServer(handle.app) as live:
        yield live


def test_finals_carry_word_times_when_asked(server, librivox):
    clips = [librivox[1], librivox[4]]
    audio = concat_with_pauses([load(c.path) for c in clips], pause_s=2.5, lead_s=1.0, tail_s=0.5)
    received = run(stream(server.url, audio, start={"command": "start", "language": "en",
                                                    "word_timestamps": True}), 180)
    finals = received.of("final")
    assert len(finals) == 2
    last = 0.0
    for final in finals:
        words = final["words"]
        assert " ".join(w["word"] for w in words).split() == final["text"].split()
        for w in words:
            assert final["start"] - 0.01 <= w["start"] <= w["end"] <= final["end"] + 0.01
            assert w["start"] >= last - 0.01 and 0 <= w["probability"] <= 1
            last = w["end"]
    assert finals[0]["words"][0]["start"] >= 0.5  # stream time: speech starts after a 1 s lead-in
    assert wer(" ".join(c.text for c in clips), received.finals_text()) <= 0.1


def test_no_words_unless_asked(server, librivox):
    received = run(stream(server.url, concat_with_pauses([load(librivox[1].path)], pause_s=0, tail_s=0.5)), 120)
    assert received.of("final") and all("words" not in f for f in received.of("final"))
