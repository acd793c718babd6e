"""A file's language, judged on its own chunks (engine/chunked.py), on the real bundled model: one language
for the whole file, the same words as when the language is given, and a multi-chunk file judged right."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_stt.audio import SAMPLE_RATE, decode_file
from whisper_stt.engine.spans import file_chunks

from .multilingual import asterisk_prompts, error_rate


@pytest.fixture(scope="module")
def spanish_file():
    """Six Asterisk Spanish prompts one after another, a second of silence between them: several chunks,
    more than 30 s of speech (so the language is judged on the first chunks only)."""
    prompts = asterisk_prompts("es", limit=8)
    if not prompts:
        pytest.skip("Debian package asterisk-core-sounds-es-wav is not installed (run ./run_tests.sh)")
    pause = np.zeros(SAMPLE_RATE, dtype=np.float32)
    audio = np.concatenate([np.concatenate([decode_file(str(p.path)), pause]) for p in prompts])
    return audio, " ".join(p.text for p in prompts)


def test_multi_chunk_file_judged_once_and_words_as_with_the_language_given(engine, spanish_file):
    audio, reference = spanish_file
    assert len(file_chunks(audio)) >= 3
    auto = engine._chunked_blocking(audio, None, 5)
    given = engine._chunked_blocking(audio, "es", 5)
    assert auto.language == "es" and auto.language_probability > 0.5
    assert auto.text == given.text  # one language for every chunk, decoded exactly as when it is given
    assert error_rate(reference, auto.text, "es") <= 0.2, auto.text
