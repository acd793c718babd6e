#!/usr/bin/env python3
"""Accuracy per language: plain faster-whisper against our REST and real-time streaming, same model.

For each language (default: en es fr it de ru ja zh ko) it prints, in one run:

* ``fw_err``: plain faster-whisper, whole file at once, beam 5, language given (the reference point);
* ``rest_err``: ``POST /transcribe`` of the same file on a server started here, language given;
* ``stream_err``: the same recordings streamed over ``/ws/transcribe`` (original protocol, 16-bit PCM at
  real-time pace, language given, 3 s of silence between recordings), the finals joined;
* ``lid_fw`` / ``lid_rest``: share of files whose language faster-whisper / ``POST /transcribe`` with the
  language left empty detected correctly;
* ``lost_rest`` / ``lost_stream``: reference words (characters for ja/zh/ko) that faster-whisper got right
  and we did not (should be 0).

Errors are WER after Whisper's normalisation (``whisper-normalizer``), CER for ja/zh/ko. Recordings:
Asterisk's telephone prompts from Debian (asterisk-core-sounds-{en,es,fr,it,ru}(-wav), real voices with
transcripts) plus the two prompts of issue 9; espeak-ng for de, ja, zh, ko (see tests/multilingual.py).

Usage:
    python bench/bench_languages.py                       # all languages, 6 recordings each
    python bench/bench_languages.py --languages es it --per-language 10 --verbose
    python bench/bench_languages.py --no-stream           # skip the real-time part (fast)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.multilingual import (  # noqa: E402
    BENCH_LANGUAGES, Recording, aligned, asterisk_prompt, matched, recordings,
)
from tests.speech import wav_bytes  # noqa: E402
from whisper_stt.audio import SAMPLE_RATE, decode_file, float32_to_pcm16  # noqa: E402

ISSUE_PROMPTS = {"es": ["demo-moreinfo"], "it": ["demo-moreinfo", "dir-intro"]}  # what issue 9 reported
GAP_S = 3.0
ESPEAK_SPEED = 130  # words per minute: slower than espeak-ng's default is easier for the base model


@dataclass
class Row:
    rec: Recording
    audio: np.ndarray
    fw: str = ""
    fw_lid: str = ""
    rest: str = ""
    rest_lid: str = ""
    stream: str = ""


@dataclass
class LangResult:
    language: str
    rows: list = field(default_factory=list)
    stream_text: str = ""


def load(rec: Recording, tmp: Path) -> np.ndarray:
    """16 kHz samples exactly as the server receives them (16-bit), so every contender hears the same."""
    if rec.path is not None:
        audio = decode_file(str(rec.path))
    else:
        out = tmp / (rec.name.replace("/", "_") + ".wav")
        subprocess.run(["espeak-ng", "-v", rec.voice, "-s", str(ESPEAK_SPEED), "-w", str(out), rec.spoken],
                       check=True, capture_output=True, timeout=60)
        audio = decode_file(str(out))
    return np.frombuffer(float32_to_pcm16(audio), dtype="<i2").astype(np.float32) / 32768.0


def start_server(tmp: Path, models_dir: str) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "whisper_server.py"), "--mode", "ws", "--ws-port", str(port), "--no-auth",
         "--models-dir", models_dir, "--host", "127.0.0.1"],
        cwd=tmp, stdout=open(tmp / "server.log", "wb"), stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc, port
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                print((tmp / "server.log").read_text(), file=sys.stderr)
                raise SystemExit("server did not start")
            time.sleep(0.5)


async def stream_language(url: str, language: str, audio: np.ndarray, chunk_ms: int = 100) -> list[dict]:
    """Stream at real-time pace; returns the finals."""
    finals: list[dict] = []
    data = float32_to_pcm16(audio)
    step = int(SAMPLE_RATE * chunk_ms / 1000) * 2
    async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
        await asyncio.wait_for(ws.recv(), 30)  # connected
        await ws.send(json.dumps({"command": "start", "audio_format": "pcm16", "language": language}))
        await asyncio.wait_for(ws.recv(), 30)
        done = asyncio.Event()

        async def reader():
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 600))
                if msg["type"] == "final":
                    finals.append(msg)
                elif msg["type"] == "status" and msg.get("state") == "stopped":
                    done.set()
                    return

        task = asyncio.create_task(reader())
        began = time.monotonic()
        for i, pos in enumerate(range(0, len(data), step)):
            await ws.send(data[pos:pos + step])
            await asyncio.sleep(max(0.0, began + (i + 1) * chunk_ms / 1000 - time.monotonic()))
        await ws.send(json.dumps({"command": "stop"}))
        await asyncio.wait_for(done.wait(), 600)
        task.cancel()
    return finals


def assign_finals(rows: list[Row], finals: list[dict]) -> None:
    """Give each recording the finals that start inside its stretch of the stream."""
    t = GAP_S / 2
    bounds = []
    for row in rows:
        bounds.append((t - GAP_S / 2, t + len(row.audio) / SAMPLE_RATE + GAP_S / 2))
        t += len(row.audio) / SAMPLE_RATE + GAP_S
    for row, (a, b) in zip(rows, bounds):
        texts = [f["text"] for f in finals if a <= f["start"] < b]
        row.stream = ("" if row.rec.language in ("ja", "zh") else " ").join(texts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--languages", nargs="+", default=list(BENCH_LANGUAGES))
    ap.add_argument("--per-language", type=int, default=6, help="real recordings per language (where packaged)")
    ap.add_argument("--no-stream", action="store_true", help="skip the real-time streaming part")
    ap.add_argument("--parallel", type=int, default=3, help="languages streamed at once (each its own connection)")
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--verbose", action="store_true", help="print every hypothesis")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_lang_"))
    results: list[LangResult] = []
    for lang in args.languages:
        recs = recordings(lang, limit=args.per_language)
        recs += [r for r in (asterisk_prompt(lang, n) for n in ISSUE_PROMPTS.get(lang, [])) if r is not None]
        if not recs:
            print(f"{lang}: no recordings (install asterisk-core-sounds-{lang}-wav or espeak-ng)", file=sys.stderr)
            continue
        results.append(LangResult(lang, [Row(r, load(r, tmp)) for r in recs]))

    # 1. plain faster-whisper, in this process, before the server takes the cores
    from faster_whisper import WhisperModel

    from whisper_stt.models import resolve_model

    model = WhisperModel(str(resolve_model("base", Path(args.models_dir)).path), device="cpu", compute_type="int8")
    for lr in results:
        for row in lr.rows:
            segments, _ = model.transcribe(row.audio, language=lr.language, beam_size=5)
            row.fw = "".join(s.text for s in segments).strip()
            _, info = model.transcribe(row.audio, language=None, beam_size=5)
            row.fw_lid = info.language
    del model

    proc, port = start_server(tmp, args.models_dir)
    http = f"http://127.0.0.1:{port}"
    try:
        # 2. REST, one file at a time
        for lr in results:
            for row in lr.rows:
                files = {"file": ("a.wav", wav_bytes(row.audio), "audio/wav")}
                r = httpx.post(f"{http}/transcribe", files=files, data={"language": lr.language}, timeout=600)
                r.raise_for_status()
                row.rest = r.json()["text"]
                r = httpx.post(f"{http}/transcribe", files=files, data={"language": ""}, timeout=600)
                r.raise_for_status()
                row.rest_lid = r.json()["language"]
        # 3. real-time streams, a few languages at once
        if not args.no_stream:
            url = f"ws://127.0.0.1:{port}/ws/transcribe"
            gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.float32)

            async def one(lr: LangResult):
                parts = [gap[: len(gap) // 2]]
                for row in lr.rows:
                    parts += [row.audio, gap]
                finals = await stream_language(url, lr.language, np.concatenate(parts))
                assign_finals(lr.rows, finals)

            async def all_streams():
                sem = asyncio.Semaphore(max(1, args.parallel))

                async def guarded(lr):
                    async with sem:
                        await one(lr)

                await asyncio.gather(*(guarded(lr) for lr in results))

            asyncio.run(all_streams())
    finally:
        proc.terminate()
        proc.wait(30)

    print(f"{'lang':<6}{'files':>6}{'audio_s':>8}{'fw_err':>8}{'rest_err':>9}{'stream_err':>11}"
          f"{'lid_fw':>8}{'lid_rest':>9}{'lost_rest':>10}{'lost_stream':>12}  source")  # lost: wrong/left out
    for lr in results:
        refs = [r.rec.text for r in lr.rows]
        lang = lr.language

        def err(attr):
            # pooled over the language's files: total edits / total reference units
            from tests.multilingual import units
            import jiwer

            ref = " ".join(" ".join(units(r, lang)) for r in refs)
            hyp = " ".join(" ".join(units(getattr(row, attr), lang)) for row in lr.rows)
            return jiwer.wer(ref, hyp or "\u2205")

        lost, dropped = {}, {}
        for a in ("rest", "stream"):
            lost[a] = sum(len(matched(r.rec.text, r.fw, lang) - matched(r.rec.text, getattr(r, a), lang))
                          for r in lr.rows)
            dropped[a] = sum(len(matched(r.rec.text, r.fw, lang) & aligned(r.rec.text, getattr(r, a), lang, "delete"))
                             for r in lr.rows)
        lost_rest = f"{lost['rest']}/{dropped['rest']}"
        lost_stream = f"{lost['stream']}/{dropped['stream']}" if not args.no_stream else "-"
        n = len(lr.rows)
        source = "asterisk" if lr.rows[0].rec.path is not None else "espeak-ng"
        print(f"{lang:<6}{n:>6}{sum(len(r.audio) for r in lr.rows) / SAMPLE_RATE:>8.1f}{err('fw'):>8.3f}"
              f"{err('rest'):>9.3f}{err('stream') if not args.no_stream else float('nan'):>11.3f}"
              f"{sum(r.fw_lid == lang for r in lr.rows) / n:>8.2f}{sum(r.rest_lid == lang for r in lr.rows) / n:>9.2f}"
              f"{lost_rest:>10}{lost_stream:>12}  {source}")
        if args.verbose:
            for r in lr.rows:
                print(f"    {r.rec.name}: ref    {r.rec.text}")
                print(f"    {'':{len(r.rec.name)}}  fw     {r.fw}  [{r.fw_lid}]")
                print(f"    {'':{len(r.rec.name)}}  rest   {r.rest}  [{r.rest_lid}]")
                print(f"    {'':{len(r.rec.name)}}  stream {r.stream}")
    print("err: pooled WER after whisper-normalizer (CER for ja/zh/ko); lid: share detected correctly with the "
          "language empty; lost a/b: reference words (characters for ja/zh/ko) faster-whisper got right that we "
          "got wrong (a), of which we left out (b).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
