"""Text heuristics on decoded transcripts: decoder loops, repeated tails, joining segment texts."""

from __future__ import annotations

import re

from .results import TranscriptionResult

# Languages written without spaces between words: segment texts are joined without a separator.
UNSPACED_LANGUAGES = frozenset({"ja", "zh", "yue", "th", "lo", "my"})
LOOP_COMPRESSION = 2.4  # Whisper's compression-ratio threshold: above it the decoder was looping


def compression_ratio(text: str) -> float:
    """gzip ratio of the text, as Whisper uses it: above ~2.4 the decoder was looping (faster-whisper's
    own measure, so our threshold means what its temperature fallback means; 0.0 for no text)."""
    from faster_whisper.transcribe import get_compression_ratio  # imported on use: no model work at import

    return get_compression_ratio(text)


def join_texts(texts, language: str) -> str:
    return ("" if language in UNSPACED_LANGUAGES else " ").join(t.strip() for t in texts if t).strip()


def _drop_repeated_tail(text: str) -> str:
    """Cut a decoder loop off the end of a short-window transcript, keeping the first copy.

    'He was not. He was not. He was' -> 'He was not.'; 'Bonjour, je voudrais ... redonner. Bonjour, je
    voudrais' -> 'Bonjour, je voudrais ... redonner.'. The end of the text is compared with the text
    ``period`` words earlier: a run of ``run`` matching words is a loop when a short phrase (2-3 words)
    repeats one and a half times more, or when 4+ words repeat exactly (rare in real speech).
    """
    words = text.split()
    n = len(words)
    for period in range(2, n - 1):
        run = 0
        # The last word may be cut short by the token budget ('... Harimu. Harimu. Harim').
        while run < n - period and (
            words[n - 1 - run] == words[n - 1 - run - period]
            or (run == 0 and words[n - 1 - period].startswith(words[n - 1]))
        ):
            run += 1
        if (period <= 3 and 2 * run >= 3 * period) or (period >= 4 and run >= 4):
            return " ".join(words[: n - run])
    return text


drop_repeated_tail = _drop_repeated_tail

_CHAR_LOOP = re.compile(r"(\S{1,4}?)\1{3,}")


def collapse_loop(text: str) -> str:
    """A looping text's first copy: word loops ('a b c a b c a b') by the tail rule, character loops of
    unspaced scripts ('勤奸奸奸奸奸奸') by keeping one of four or more repeats."""
    return _CHAR_LOOP.sub(r"\1", _drop_repeated_tail(text)).strip()


def _without_loops(result: TranscriptionResult) -> TranscriptionResult:
    """The careful decode's last resort (sampling at temperature 1) can still loop: keep the loop's first
    copy, as the stream's filter does, instead of passing the loop on."""
    changed = False
    for seg in result.segments:
        if seg.compression_ratio > LOOP_COMPRESSION:
            cut = collapse_loop(seg.text)
            if cut != seg.text:
                seg.text, seg.compression_ratio, changed = cut, round(compression_ratio(cut), 3), True
    if changed:
        result.segments = [s for s in result.segments if s.text]
        result.text = join_texts((s.text for s in result.segments), result.language)
    return result


without_loops = _without_loops
