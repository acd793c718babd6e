#!/usr/bin/env python3
"""REST overhead: the same files through the running server and through faster-whisper in-process.

Starts whisper_server.py (bundled base model, same device/compute type/beam/VAD settings as the
in-process call), then alternates rounds: every file over HTTP, every file in-process. Prints per-file
medians, totals and the ratio server / in-process. Run: .venv/bin/python bench/bench_rest.py [--rounds 3]
"""

from __future__ import annotations

import argparse
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

from whisper_stt.audio import decode_file  # noqa: E402
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
        from faster_whisper import WhisperModel

        model = WhisperModel(str(model_dir), device="cpu", compute_type="int8")
        client = httpx.Client(timeout=600)

        def via_server(path: Path) -> str:
            with path.open("rb") as fh:
                r = client.post(base + "/transcribe", files={"file": (path.name, fh)})
            r.raise_for_status()
            return r.json()["text"]

        def in_process(path: Path) -> str:
            segments, _ = model.transcribe(str(path), beam_size=args.beam_size, vad_filter=True)
            return "".join(s.text for s in segments).strip()

        for f in files:  # warm-up both paths
            via_server(f)
            in_process(f)

        times: dict[str, dict[Path, list[float]]] = {"server": {f: [] for f in files}, "inproc": {f: [] for f in files}}
        texts = {}
        for _ in range(args.rounds):
            for name, fn in (("server", via_server), ("inproc", in_process)):
                for f in files:
                    t = time.perf_counter()
                    texts[(name, f)] = fn(f)
                    times[name][f].append(time.perf_counter() - t)

        print(f"REST overhead, bundled base int8 on CPU ({os.cpu_count()} cores), beam {args.beam_size}, "
              f"VAD on, median of {args.rounds} rounds")
        print(f"{'file':32} {'audio s':>8} {'server s':>9} {'in-proc s':>9} {'ratio':>7}  same text")
        tot_s = tot_i = 0.0
        for f in files:
            s = statistics.median(times["server"][f])
            i = statistics.median(times["inproc"][f])
            tot_s, tot_i = tot_s + s, tot_i + i
            same = texts[("server", f)] == texts[("inproc", f)]
            print(f"{f.name[-32:]:32} {durations[f]:8.1f} {s:9.3f} {i:9.3f} {s / i:7.3f}  {same}")
        print(f"{'total':32} {sum(durations.values()):8.1f} {tot_s:9.3f} {tot_i:9.3f} {tot_s / tot_i:7.3f}")
    finally:
        server.terminate()
        server.wait(30)
        log.close()


if __name__ == "__main__":
    main()
