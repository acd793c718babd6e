"""Does a transcript cover the speech it came from? Rules that decide when to decode again, carefully.

The fast decoders (short window, batched, no timestamps) can skip words the model hears: a hard opening,
a loop cut off by the token budget or by the repeated-tail rule. Nothing in the decoder's own scores
says so (the Spanish prompt that led here came back with average log-probability -0.76 and ~9 words for
15 s of speech). So the text is measured against the speech: how many *units* of text (letters of an
alphabetic script, kana/kanji/hanzi characters, Hangul syllables) per second of voice activity. Normal
read speech has ~12-15 letters/s (English, Spanish, Russian ...), ~6-8 Japanese characters/s, ~4-5
Chinese characters/s and ~5-7 Hangul syllables/s; a transcript with under a third of that for the speech
it came from has lost words, and the chunk is decoded again the careful way (faster-whisper's
temperature-fallback decode).

Everything here is pure and cheap, so it is unit-tested without the model.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from typing import Optional

# Minimum units per second of VAD speech, and units forgiven (the edges of a span are not speech).
ALPHABETIC_MIN_RATE = 5.5
CJK_MIN_RATE = {"ja": 2.0, "zh": 1.6, "yue": 1.6, "ko": 2.0}
ALPHABETIC_SLACK = 6
CJK_SLACK = 2
DIGIT_UNITS = 3  # "7" is read as "siete" / "seven": a digit stands for a few letters
MIN_SPEECH_S = 1.5  # below this, too little speech to judge a rate


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (
        0x3040 <= o <= 0x30FF  # kana
        or 0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF  # CJK ideographs
        or 0xAC00 <= o <= 0xD7A3  # Hangul syllables
        or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F  # Hangul jamo
    )


@dataclass(frozen=True)
class Units:
    letters: int  # letters of alphabetic scripts (digits count DIGIT_UNITS each)
    cjk: int  # kana, kanji / hanzi, Hangul syllables


def count_units(text: str) -> Units:
    letters = cjk = 0
    for ch in text:
        if _is_cjk(ch):
            cjk += 1
        elif ch.isdigit():
            letters += DIGIT_UNITS
        elif unicodedata.category(ch).startswith("L"):
            letters += 1
    return Units(letters, cjk)


def min_units(speech_s: float, language: Optional[str]) -> float:
    """Fewest units a transcript of ``speech_s`` seconds of voice activity may have (0: no judgement)."""
    if speech_s < MIN_SPEECH_S:
        return 0.0
    if language in CJK_MIN_RATE:
        return max(0.0, CJK_MIN_RATE[language] * speech_s - CJK_SLACK)
    return max(0.0, ALPHABETIC_MIN_RATE * speech_s - ALPHABETIC_SLACK)


def coverage_units(text: str, language: Optional[str]) -> float:
    """The transcript's size in the units :func:`min_units` uses for ``language``.

    In a CJK language stray Latin letters (a brand name, "PBX") count at the CJK rate's share; in an
    alphabetic language CJK characters (a wrong detection) count as a syllable's worth of letters.
    """
    u = count_units(text)
    if language in CJK_MIN_RATE:
        return u.cjk + u.letters / 3.0
    return u.letters + 3 * u.cjk


def covers(text: str, speech_s: float, language: Optional[str]) -> bool:
    """True when ``text`` is long enough for ``speech_s`` seconds of speech in ``language``."""
    return coverage_units(text, language) >= min_units(speech_s, language)


EDGE_GAP_S = 2.5  # speech before the first word / after the last one that counts as left untold


def uncovered_edges(
    segments: list[tuple[float, float]], speech: list[tuple[float, float]], min_gap_s: float = EDGE_GAP_S
) -> list[tuple[float, float]]:
    """Spans of voice activity before the first segment or after the last one, each at least
    ``min_gap_s`` of speech: where a decoder that skipped the opening or the end left speech untold.

    ``segments`` and ``speech`` are (start, end) in seconds on the same clock.
    """
    if not speech:
        return []
    if not segments:
        return [(speech[0][0], speech[-1][1])] if _speech_in(speech, speech[0][0], speech[-1][1]) >= min_gap_s else []
    first = min(s for s, _ in segments)
    last = max(e for _, e in segments)
    out = []
    if _speech_in(speech, speech[0][0], first) >= min_gap_s:
        out.append((speech[0][0], first))
    if _speech_in(speech, last, speech[-1][1]) >= min_gap_s:
        out.append((last, speech[-1][1]))
    return out


def _speech_in(speech: list[tuple[float, float]], a: float, b: float) -> float:
    return sum(max(0.0, min(e, b) - max(s, a)) for s, e in speech)


# --- padding buckets: a clip's padded length depends on its own length only ----------------------
BUCKET_S = 1.0  # short clips: 1 s steps
BUCKET_GROWTH = 1.15  # longer clips: ~15 % steps, so padding stays under ~15 % of the work


def bucket_seconds(clip_s: float, pad_s: float, max_s: float = 30.0) -> float:
    """Length a clip is padded to: ``clip_s + pad_s`` rounded up to the next bucket edge.

    Buckets are 1 s apart up to 8 s, then grow geometrically; the last edge is ``max_s``. Clips of
    the same bucket are batched together, so no clip is padded to a neighbour's length and its text
    cannot depend on who else was in the batch.
    """
    need = clip_s + pad_s
    edge = 1.0
    while edge < need and edge < max_s:
        edge = edge + BUCKET_S if edge < 8.0 else math.ceil(edge * BUCKET_GROWTH)
    return float(need) if need > max_s else float(min(edge, max_s))
