#!/usr/bin/env python3
"""File transcription: the same files through the running server and through faster-whisper in-process.

Starts whisper_server.py (bundled base model, int8, beam 5, VAD on), then alternates rounds: every file
over HTTP, every file with faster-whisper's WhisperModel.transcribe in-process (sequential 30 s windows),
every file with faster-whisper's BatchedInferencePipeline in-process (batch 8). Prints per-file medians
and word error rates, totals, and the ratios server / in-process.
Run: .venv/bin/python bench/bench_rest.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.speech import librivox_clips, wer  # noqa: E402
from whisper_stt.audio import decode_file  # noqa: E402
from whisper_stt.config import Settings  # noqa: E402
from whisper_stt.engine import Engine  # noqa: E402
from whisper_stt.models import ensure_bundled_model  # noqa: E402

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def make_files(out: Path) -> list[Path]:
    import wave

    clips = sorted(LIBRIVOX.glob("*.wav"))
    if not clips:
        sys.exit("needs Debian's pocketsphinx-testdata (LibriVox clips)")
    files = [clips[0], clips[3]]
    # about a minute of real speech: the five clips twice, with half-second pauses
    pause = np.zeros(8000, dtype=np.float32)
    parts = []
    for _ in range(2):
        for clip in clips:
            parts += [decode_file(str(clip)), pause]
    minute = np.concatenate(parts)
    path = out / "librivox_minute.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(minute, -1, 1) * 32767).astype("<i2").tobytes())
    return files + [path]


def reference_texts(files: list[Path]) -> dict[Path, str]:
    clips = {c.path.name: c.text for c in librivox_clips()}
    minute = " ".join([c.text for c in librivox_clips()] * 2)
    return {f: clips.get(f.name, minute) for f in files}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--beam-size", type=int, default=5)
    args = ap.parse_args()

    models_dir = ROOT / "models"
    model_dir = ensure_bundled_model(models_dir)
    tmp = Path(tempfile.mkdtemp(prefix="bench_rest_"))
    files = make_files(tmp)
    durations = {f: len(decode_file(str(f))) / 16000 for f in files}
    refs = reference_texts(files)

    port = free_port()
    log = (tmp / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "whisper_server.py"), "--mode", "ws", "--ws-port", str(port),
         "--host", "127.0.0.1", "--no-auth", "--models-dir", str(models_dir), "--device", "cpu",
         "--beam-size", str(args.beam_size), "--key-file", str(tmp / "keys.json"), "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(base + "/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        model = WhisperModel(str(model_dir), device="cpu", compute_type="int8")
        batched = BatchedInferencePipeline(model)
        engine = Engine.load(Settings(models_dir=models_dir, device="cpu", beam_size=args.beam_size))
        client = httpx.Client(timeout=600)

        def via_server(path: Path) -> str:
            with path.open("rb") as fh:
                r = client.post(base + "/transcribe", files={"file": (path.name, fh)})
            r.raise_for_status()
            return r.json()["text"]

        def in_process(path: Path) -> str:
            segments, _ = model.transcribe(str(path), beam_size=args.beam_size, vad_filter=True)
            return "".join(s.text for s in segments).strip()

        def in_process_batched(path: Path) -> str:
            segments, _ = batched.transcribe(str(path), beam_size=args.beam_size, batch_size=8)
            return "".join(s.text for s in segments).strip()

        def our_engine(path: Path) -> str:
            # the server's own code path without HTTP: decode + Engine.transcribe, in this process
            return asyncio.run(engine.transcribe(decode_file(str(path)), None)).text

        paths = (("server", via_server), ("engine", our_engine), ("inproc", in_process),
                 ("batched", in_process_batched))
        for f in files:  # warm-up every path
            for _, fn in paths:
                fn(f)

        times: dict[str, dict[Path, list[float]]] = {name: {f: [] for f in files} for name, _ in paths}
        texts = {}
        for _ in range(args.rounds):
            for name, fn in paths:
                for f in files:
                    t = time.perf_counter()
                    texts[(name, f)] = fn(f)
                    times[name][f].append(time.perf_counter() - t)

        print(f"File transcription, bundled base int8 on CPU ({os.cpu_count()} cores), beam {args.beam_size}, "
              f"VAD on, median of {args.rounds} rounds; WER against the LibriVox transcripts")
        print(f"{'file':26} {'audio s':>7} | {'server s':>8} {'WER':>5} | {'fw seq s':>8} {'WER':>5} | "
              f"{'fw batch s':>10} {'WER':>5} | {'srv/seq':>7} {'srv/batch':>9} | {'engine s':>8} {'srv/engine':>10}")
        totals = {name: 0.0 for name, _ in paths}
        for f in files:
            med = {name: statistics.median(times[name][f]) for name, _ in paths}
            for name in totals:
                totals[name] += med[name]
            err = {name: wer(refs[f], texts[(name, f)]) for name, _ in paths}
            print(f"{f.name[-26:]:26} {durations[f]:7.1f} | {med['server']:8.3f} {err['server']:5.3f} | "
                  f"{med['inproc']:8.3f} {err['inproc']:5.3f} | {med['batched']:10.3f} {err['batched']:5.3f} | "
                  f"{med['server'] / med['inproc']:7.3f} {med['server'] / med['batched']:9.3f} | "
                  f"{med['engine']:8.3f} {med['server'] / med['engine']:10.3f}")
        print(f"{'total':26} {sum(durations.values()):7.1f} | {totals['server']:8.3f} {'':5} | "
              f"{totals['inproc']:8.3f} {'':5} | {totals['batched']:10.3f} {'':5} | "
              f"{totals['server'] / totals['inproc']:7.3f} {totals['server'] / totals['batched']:9.3f} | "
              f"{totals['engine']:8.3f} {totals['server'] / totals['engine']:10.3f}")
        print("fw seq: WhisperModel.transcribe; fw batch: BatchedInferencePipeline(batch 8); engine: the server's "
              "Engine.transcribe in this process, without HTTP (srv/engine = HTTP + upload overhead)")
    finally:
        server.terminate()
        server.wait(30)
        log.close()


if __name__ == "__main__":
    main()
