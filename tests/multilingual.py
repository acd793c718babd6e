"""Speech in many languages with known text, and Whisper-style scoring (tests and bench/bench_languages.py).

Real recordings: Asterisk's telephone prompts from Debian (asterisk-core-sounds-{en,es,fr,it,ru} with the
WAV packages), read by professional voices, 8 kHz; their transcripts ship in core-sounds-<lang>.txt.gz.
Languages with no packaged recording (de, ja, zh, ko) are spoken by espeak-ng. Text is normalised the way
Whisper's evaluations do (``whisper-normalizer``): English normaliser for en, the basic one elsewhere;
character error rate for ja, zh and ko.
"""

from __future__ import annotations

import gzip
import re
import unicodedata
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds")
ASTERISK_DOCS = Path("/usr/share/doc")
ASTERISK_LANGUAGES = ("en", "es", "fr", "it", "ru")
CER_LANGUAGES = frozenset({"ja", "zh", "ko", "yue", "th"})
LATIN_LANGUAGES = frozenset({"en", "es", "fr", "it", "de", "pt", "nl"})
BENCH_LANGUAGES = ("en", "es", "fr", "it", "de", "ru", "ja", "zh", "ko")


@dataclass(frozen=True)
class Recording:
    name: str
    path: Optional[Path]  # None: synthesize ``spoken`` with espeak-ng
    text: str  # reference transcript
    language: str
    spoken: str = ""  # what espeak-ng reads (kana for Japanese), when synthesized
    voice: str = ""  # espeak-ng voice


def asterisk_dir(language: str) -> Optional[Path]:
    found = sorted(ASTERISK_SOUNDS.glob(f"{language}_*")) if ASTERISK_SOUNDS.is_dir() else []
    return next((d for d in found if d.is_dir()), None)


def asterisk_transcripts(language: str) -> dict[str, str]:
    path = ASTERISK_DOCS / f"asterisk-core-sounds-{language}" / f"core-sounds-{language}.txt.gz"
    if not path.is_file():
        return {}
    out = {}
    with gzip.open(path, "rt", encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            if line.startswith(";") or ":" not in line:
                continue
            name, text = line.split(":", 1)
            out[name.strip()] = text.strip().strip("\u201c\u201d\"")
    return out


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def asterisk_prompts(language: str, min_s: float = 4.0, max_s: float = 20.0, limit: Optional[int] = None) -> list[Recording]:
    """Prompts of ``language`` between ``min_s`` and ``max_s`` seconds whose transcript is plain words
    (no digits, no [sound descriptions], no '...' fragments); ``limit`` picks evenly over the durations."""
    folder = asterisk_dir(language)
    if folder is None:
        return []
    rows = []
    for name, text in sorted(asterisk_transcripts(language).items()):
        path = folder / f"{name}.wav"
        if not path.is_file() or re.search(r"[\d\[\]()<>]|\.\.\.|…|www|\b[A-Z]{2,}\b", text) or len(text) < 10:
            continue
        seconds = wav_seconds(path)
        if min_s <= seconds <= max_s:
            rows.append((seconds, Recording(f"{language}/{name}", path, text, language)))
    rows.sort(key=lambda r: (r[0], r[1].name))
    if limit and len(rows) > limit:  # spread over the durations
        rows = [rows[round(i * (len(rows) - 1) / (limit - 1))] for i in range(limit)] if limit > 1 else rows[:1]
    return [r for _, r in rows]


def asterisk_prompt(language: str, name: str) -> Optional[Recording]:
    """One named prompt (any content), or None when its package is not installed."""
    folder = asterisk_dir(language)
    text = asterisk_transcripts(language).get(name)
    if folder is None or text is None or not (folder / f"{name}.wav").is_file():
        return None
    return Recording(f"{language}/{name}", folder / f"{name}.wav", text, language)


# Languages without packaged recordings: espeak-ng. (reference text, what espeak-ng reads). Japanese is read
# from kana (espeak-ng reads kanji as "Chinese letter") and scored against the usual kanji spelling.
ESPEAK_VOICES = {"zh": "cmn-latn-pinyin"}  # the plain cmn voice reads pinyin as English
ESPEAK_SETS = {
    "de": [
        ("Guten Morgen. Ich möchte heute Abend einen Tisch für zwei Personen reservieren.", None),
        ("Können Sie mir bitte sagen, wo der nächste Supermarkt ist?", None),
        ("Das Wetter ist heute sehr schön und wir gehen in den Park.", None),
        ("Der Zug nach Berlin fährt in zehn Minuten ab.", None),
    ],
    "ja": [
        ("今日はとてもいい天気です。", "きょうは とても いい てんき です。"),
        ("すみません、駅はどこですか。", "すみません、えきは どこ ですか。"),
        ("私は毎日電車で会社に行きます。", "わたしは まいにち でんしゃで かいしゃに いきます。"),
        ("明日は友達と映画を見に行きます。", "あしたは ともだちと えいがを みに いきます。"),
    ],
    "zh": [
        ("今天天气很好，我们去公园散步吧。", None),
        ("请问火车站怎么走？", None),
        ("这个周末我想和朋友一起去看电影。", None),
        ("我每天早上喝一杯咖啡。", None),
    ],
    "ko": [
        ("안녕하세요. 오늘은 날씨가 정말 좋습니다.", None),
        ("저는 매일 아침 커피를 마십니다.", None),
        ("지하철역이 어디에 있는지 알려 주세요.", None),
        ("주말에 친구들과 영화를 보러 갈 거예요.", None),
    ],
}


def espeak_recordings(language: str) -> list[Recording]:
    return [
        Recording(f"{language}/espeak{i + 1}", None, text, language, spoken or text, ESPEAK_VOICES.get(language, language))
        for i, (text, spoken) in enumerate(ESPEAK_SETS.get(language, []))
    ]


def recordings(language: str, limit: Optional[int] = 6) -> list[Recording]:
    """Real prompts where a package has them, else espeak-ng sentences."""
    return asterisk_prompts(language, limit=limit) or espeak_recordings(language)


# --- scoring ----------------------------------------------------------------------------------------
def _normalizers():
    from whisper_normalizer.basic import BasicTextNormalizer
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer(), BasicTextNormalizer()


_NORM = None


def normalize(text: str, language: str) -> str:
    global _NORM
    if _NORM is None:
        _NORM = _normalizers()
    english, basic = _NORM
    out = english(text) if language == "en" else basic(text)
    if language in LATIN_LANGUAGES:  # the prompts' transcripts often leave accents out ("numero")
        out = "".join(ch for ch in unicodedata.normalize("NFKD", out) if not unicodedata.combining(ch))
    if language == "ja":  # the model writes the same sounds in katakana or hiragana
        out = "".join(chr(ord(ch) - 0x60) if "\u30a1" <= ch <= "\u30f6" else ch for ch in out)
    return out


def units(text: str, language: str) -> list[str]:
    """Scoring units: characters (no spaces) for CJK, words otherwise."""
    norm = normalize(text, language)
    return list(norm.replace(" ", "")) if language in CER_LANGUAGES else norm.split()


def error_rate(reference: str, hypothesis: str, language: str) -> float:
    """WER (CER for ja/zh/ko) after Whisper's normalisation."""
    import jiwer

    ref, hyp = units(reference, language), units(hypothesis, language)
    if not ref:
        return 0.0 if not hyp else 1.0
    return jiwer.wer(" ".join(ref), " ".join(hyp) or "\u2205")


def aligned(reference: str, hypothesis: str, language: str, kind: str = "equal") -> set[int]:
    """Indices of the reference's units aligned as ``kind`` ('equal': right, 'delete': left out)."""
    import jiwer

    ref, hyp = units(reference, language), units(hypothesis, language)
    if not ref:
        return set()
    if not hyp:
        return set(range(len(ref))) if kind == "delete" else set()
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    found = set()
    for chunk in out.alignments[0]:
        if chunk.type == kind:
            found.update(range(chunk.ref_start_idx, chunk.ref_end_idx))
    return found


def matched(reference: str, hypothesis: str, language: str) -> set[int]:
    """Indices of the reference's units that ``hypothesis`` got right (aligned hits)."""
    return aligned(reference, hypothesis, language, "equal")
