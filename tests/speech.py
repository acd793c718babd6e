"""Real and synthesized speech with known text, and error-rate scoring, for recognition tests.

Real speech: LibriVox clips from Debian's pocketsphinx-testdata. Synthesized: espeak-ng.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import unicodedata
import wave
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np

from whisper_stt.audio import SAMPLE_RATE, float32_to_pcm16

LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")


@dataclass(frozen=True)
class Clip:
    path: Path
    text: str
    language: str


def librivox_clips() -> list[Clip]:
    """The five LibriVox clips (3-7 s, 16 kHz) with their reference transcripts."""
    transcript = LIBRIVOX_DIR / "transcription"
    if not transcript.is_file():
        return []
    clips = []
    for line in transcript.read_text().splitlines():
        m = re.match(r"<s>(.*)</s>\s*\((.*)\)", line.strip())
        if m:
            clips.append(Clip(LIBRIVOX_DIR / f"{m.group(2)}.wav", m.group(1).strip(), "en"))
    return clips


# Sentences espeak-ng pronounces well enough for the base model. Japanese is written in kana because
# espeak-ng reads kanji as "Chinese letter".
ESPEAK_SENTENCES = {
    "en": "The weather is nice today and we are going to the park to play football with our friends.",
    "es": "Buenos días. Me gustaría reservar una mesa para dos personas esta noche.",
    "fr": "Bonjour, je voudrais acheter du pain et du fromage pour le dîner.",
    "ja": "きょうは とても いい てんき です。",
    "ko": "안녕하세요. 오늘은 날씨가 정말 좋습니다.",
}


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


# Words per minute that the base model understands best (measured per voice); 160 otherwise.
ESPEAK_SPEED = {"ko": 130}


def espeak(text: str, language: str, path: Path, speed: int | None = None) -> Path:
    """Speak ``text`` into a WAV file (22.05 kHz mono) with espeak-ng."""
    speed = speed or ESPEAK_SPEED.get(language, 160)
    subprocess.run(
        ["espeak-ng", "-v", language, "-s", str(speed), "-w", str(path), text],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


def wav_bytes(audio: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """Float samples in [-1, 1] (clipped) as a mono 16-bit WAV file declaring ``rate`` (no resampling)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(float32_to_pcm16(audio))
    return buffer.getvalue()


def write_wav(path: Path, audio: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    path = Path(path)
    path.write_bytes(wav_bytes(audio, rate))
    return path


_EXPANSIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    # Katakana -> hiragana: the model writes the same Japanese sounds in either script.
    text = "".join(chr(ord(ch) - 0x60) if "\u30a1" <= ch <= "\u30f6" else ch for ch in text)
    text = re.sub(r"[^\w\s']", " ", text)
    text = text.replace("'", "")
    words = [_EXPANSIONS.get(w, w) for w in text.split()]
    return " ".join(words)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after lower-casing and dropping punctuation."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return jiwer.wer(ref, hyp or "<empty>")


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate ignoring spaces and punctuation (for Japanese, Korean, Chinese)."""
    ref = normalize(reference).replace(" ", "")
    hyp = normalize(hypothesis).replace(" ", "")
    if not ref:
        return 0.0 if not hyp else 1.0
    return jiwer.cer(ref, hyp or "\u2205")


def error_rate(reference: str, hypothesis: str, language: str) -> float:
    return cer(reference, hypothesis) if language in ("ja", "ko", "zh", "th") else wer(reference, hypothesis)


# container format -> (file suffix, codec, sample rate, codec options)
FORMATS = {
    "wav": ("wav", "pcm_s16le", 16000, {}),
    "mp3": ("mp3", "libmp3lame", 16000, {}),
    "m4a": ("m4a", "aac", 16000, {}),
    "ogg": ("ogg", "libopus", 48000, {}),  # Ogg Opus
    "opus": ("opus", "libopus", 48000, {}),
    "flac": ("flac", "flac", 16000, {}),
    "webm": ("webm", "libopus", 48000, {}),  # what browsers' MediaRecorder produces
}


def encode(samples, path: Path, fmt: str) -> Path:
    """Encode float32 16 kHz mono samples into ``fmt`` with PyAV (no ffmpeg binary)."""
    import av
    import numpy as np

    suffix, codec, rate, options = FORMATS[fmt]
    path = Path(path).with_suffix("." + suffix)
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.layout = "mono"
        resampler = av.AudioResampler(format=stream.format.name if stream.format else "s16", layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        for out in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(out):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
