"""Decompression bombs: time and peak memory to decode (or refuse) audio that declares hours of sound.

Each decode runs in a fresh subprocess so its peak RSS is its own. "before" is a plain whole-file decode
(faster-whisper's decode_audio, which this server used until the duration limit); "after" is
``whisper_stt.audio.decode_file`` with the CPU default limit (1 h). Also times a normal 7 s upload over
REST while bombs are being refused, against the same upload alone, on one live server.

    .venv/bin/python bench/bench_bombs.py [--limit-s 3600]
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav")

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
path, mode, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import numpy as np, av
from whisper_stt.audio import decode_file, AudioTooLong
from faster_whisper.audio import decode_audio
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
outcome = "decoded"
try:
    audio = decode_audio(path) if mode == "before" else decode_file(path, limit)
    seconds = len(audio) / 16000
except AudioTooLong:
    outcome, seconds = "refused (too long)", 0.0
elapsed = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"outcome": outcome, "seconds": seconds, "time": elapsed, "added_mb": (peak - before) / 1024}}))
"""


def make_bombs(folder: Path) -> dict[str, Path]:
    bombs = {}
    for hours in (1, 4):
        path = folder / f"silence_{hours}h.flac"
        subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(path), "trim", "0",
                        str(hours * 3600)], check=True)
        bombs[f"FLAC silence {hours} h"] = path
    n = 20000  # 8-bit samples at 1 Hz: 20 KB that decode to 5.6 h at 16 kHz
    header = (b"RIFF" + struct.pack("<I", 36 + n) + b"WAVE" + b"fmt "
              + struct.pack("<IHHIIHH", 16, 1, 1, 1, 1, 1, 8) + b"data" + struct.pack("<I", n))
    path = folder / "wav_8bit_1hz.wav"
    path.write_bytes(header + bytes([128]) * n)
    bombs["WAV 8-bit 1 Hz, 20 KB"] = path
    return bombs


def measure(path: Path, mode: str, limit: float) -> dict:
    code = CHILD.format(root=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code, str(path), mode, str(limit)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def latency_beside_bombs(refused: list[Path], folder: Path) -> tuple[float, float]:
    import httpx

    sys.path.insert(0, str(ROOT))
    from tests.conftest import free_port  # noqa: E402

    port = free_port()
    log = (folder / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "whisper_server.py"), "--mode", "ws", "--ws-port",
                             str(port), "--no-auth", "--key-file", str(folder / "keys.json"),
                             "--models-dir", str(ROOT / "models")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/transcribe"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        speech = LIBRIVOX.read_bytes()

        def normal() -> float:
            t = time.perf_counter()
            r = httpx.post(url, files={"file": ("s.wav", speech)}, timeout=300)
            r.raise_for_status()
            return time.perf_counter() - t

        normal()  # warm-up
        alone = min(normal() for _ in range(3))
        stop = threading.Event()

        def bomber() -> None:
            while not stop.is_set():
                for path in refused:
                    httpx.post(url, files={"file": (path.name, path.read_bytes())}, timeout=300)

        threads = [threading.Thread(target=bomber) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        beside = sorted(normal() for _ in range(3))[1]
        stop.set()
        for t in threads:
            t.join()
        return alone, beside
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit-s", type=float, default=3600.0)
    parser.add_argument("--skip-before", action="store_true", help="skip the unbounded decodes (slow)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bombs = make_bombs(folder)
        print("| bomb | file size | before: time | before: +RSS | after: outcome | after: time | after: +RSS |")
        print("|---|---|---|---|---|---|---|")
        for name, path in bombs.items():
            before = None if args.skip_before else measure(path, "before", args.limit_s)
            after = measure(path, "after", args.limit_s)
            b = f"{before['time']:.2f} s | {before['added_mb']:.0f} MB" if before else "- | -"
            print(f"| {name} | {path.stat().st_size / 1024:.0f} KB | {b} | {after['outcome']} | "
                  f"{after['time']:.2f} s | {after['added_mb']:.0f} MB |", flush=True)
        refused = [path for name, path in bombs.items() if "1 h" not in name]
        alone, beside = latency_beside_bombs(refused, folder)
        print(f"\n7.1 s LibriVox upload over REST: {alone:.2f} s alone, {beside:.2f} s (median of 3) while two "
              f"clients keep sending the bombs over the limit ({', '.join(p.name for p in refused)})")


if __name__ == "__main__":
    main()
