"""Which words of a live utterance are settled, and what is appended when (plain functions, no I/O).

* ``stabilise``: local agreement. Words two partials in a row agree on (minus the last agreed word, which
  Whisper often revises at the edge of the audio) become stable for good.
* ``align``: the deltas already sent are fixed, but the final decoding (beam search over the whole
  utterance) may word a passage differently. ``align`` finds where the sent words end in the new word
  list (an edit-distance alignment of the sent words against each prefix, and of each prefix of the sent
  words against the whole list), so the rest can be appended without repeating or dropping words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def norm_words(text: str) -> list[str]:
    return [re.sub(r"[^\w']", "", w.lower()) for w in text.split()]


def stabilise(stable: list[str], previous: list[str], words: list[str]) -> tuple[list[str], list[str]]:
    """New (stable, unstable) from the stable words so far, the previous partial's words and this one's."""
    norm_new = norm_words(" ".join(words))
    prev = norm_words(" ".join(previous))
    unstable = words[len(stable):] if len(words) > len(stable) else []
    agree = 0
    for a, b in zip(prev, norm_new):
        if a != b:
            break
        agree += 1
    agree = max(agree - 1, 0) if len(norm_new) > agree else agree
    if agree > len(stable):
        stable = stable + words[len(stable):agree]
        unstable = words[agree:]
    return list(stable), list(unstable)


@dataclass
class Alignment:
    end: int  # words[:end] are covered by the sent words
    overflow: list[str]  # sent words beyond the end of ``words`` (they belong to what follows)


def align(sent: list[str], words: list[str]) -> Alignment:
    """Where do the already-sent words end in ``words``? Edit distance on normalised words."""
    if not sent:
        return Alignment(0, [])
    a, b = norm_words(" ".join(sent)), norm_words(" ".join(words))
    n, m = len(a), len(b)
    prev = list(range(m + 1))
    rows = [prev]
    for i in range(1, n + 1):
        cur = [i] + [0] * m
        for j in range(1, m + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
        rows.append(cur)
        prev = cur
    # all of `sent` against a prefix of `words` (the usual case: the final goes on after the deltas) ...
    j_best = min(range(m + 1), key=lambda j: (rows[n][j], -j))
    # ... or a prefix of `sent` against all of `words` (a monologue cut before the last sent words)
    i_best = min(range(n + 1), key=lambda i: (rows[i][m], -i))
    if rows[i_best][m] < rows[n][j_best] and i_best < n:
        return Alignment(m, list(sent[i_best:]))
    return Alignment(j_best, [])


def join_delta(sent_any: bool, words: list[str]) -> str:
    """Text to append for ``words``: a leading space when something was sent before."""
    if not words:
        return ""
    text = " ".join(words)
    return (" " + text) if sent_any else text
