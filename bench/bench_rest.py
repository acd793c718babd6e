#!/usr/bin/env python3
"""File transcription: the same files through the running server and through faster-whisper in-process.

Starts whisper_server.py (bundled base model, int8, beam 5, VAD on), then alternates rounds: every file
over HTTP, every file with faster-whisper's WhisperModel.transcribe in-process (sequential 30 s windows),
every file with faster-whisper's BatchedInferencePipeline in-process (batch 8). Prints per-file medians
and word error rates, totals, and the ratios server / in-process.
Run: .venv/bin/python bench/bench_rest.py [--rounds 3] [--streams 16]

With ``--streams N``, N real-time WebSocket streams (bench_load's LibriVox replay, silence_threshold
``--silence-threshold``) run against the same server, round after round, while the timed rounds go on;
their final latency p50/p95 and error rate are printed after the table (files and streams share the box),
then split by which path was transcribing files when each final arrived (the server's own file rounds,
the in-process engine, or faster-whisper's pipelines, which also compete with the streams for the CPU).
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


class StreamsBeside:
    """``args.streams`` real-time streams replayed against the server, round after round, in a thread."""

    def __init__(self, url: str, args) -> None:
        import importlib.util
        import threading

        spec = importlib.util.spec_from_file_location("bench_load", Path(__file__).with_name("bench_load.py"))
        self.bl = importlib.util.module_from_spec(spec)
        sys.modules["bench_load"] = self.bl
        spec.loader.exec_module(self.bl)
        self.url, self.n = url, args.streams
        self.args = argparse.Namespace(silence_threshold=args.silence_threshold, stagger=0.37, speed=1.0,
                                       chunk_ms=100)
        self.item = self.bl.speech_item()
        self.results: list = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(self.n * 0.37 + 3)  # every stream is talking before the timed rounds start

    def _run(self) -> None:
        while not self._done.is_set():
            self.results += asyncio.run(self.bl.run_streams(self.url, self.item, self.n, self.args))

    def timed_finals(self, res) -> list[tuple[float, float]]:
        """(arrival time, latency) of a replay's finals after silence, as ``analyse`` measures latency."""
        bs = self.bl.bs
        spans = self.spans
        out = []
        for t, m in res.finals:
            ends = [e for a, e in spans if m["start"] <= e <= m["end"] + 0.1]
            if m["reason"] == "silence" and ends:
                out.append((t, t - bs.sent_at(res, max(ends))))
        return out

    def stop(self, phases: list[tuple[str, float, float]]) -> None:
        """Prints the streams' figures over the whole run, then by what ran beside them when each final
        arrived (``phases``: (name, start, end) in monotonic time, e.g. the server's file rounds)."""
        self._done.set()
        self._thread.join(600)  # the round in progress ends (its streams finish their audio)
        good = [r for r in self.results if not isinstance(r, BaseException)]
        rows = [self.bl.bs.analyse(r) for r in good]
        lat = [x for r in rows for x in r["final_lat"]]
        first = [x for r in rows for x in r["first_lat"]]
        pct = self.bl.pct
        print(f"{self.n} streams beside the file rounds (silence_threshold {self.args.silence_threshold} s, "
              f"{len(rows)} stream replays, {sum(isinstance(r, BaseException) for r in self.results)} dropped): "
              f"final p50 {pct(lat, 50):.2f} s, p95 {pct(lat, 95):.2f} s; first partial p95 {pct(first, 95):.2f} s; "
              f"WER {statistics.mean(r['stream_err'] for r in rows) if rows else float('nan'):.3f}")
        self.spans = self.bl.bs.speech_spans(self.item.audio)
        timed = [x for r in good for x in self.timed_finals(r)]
        for name in dict.fromkeys(p[0] for p in phases):
            during = [lat for t, lat in timed if any(n == name and a <= t <= b for n, a, b in phases)]
            print(f"  finals that arrived while {name:8} ran: {len(during):4d}, "
                  f"p50 {pct(during, 50):.2f} s, p95 {pct(during, 95):.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--beam-size", type=int, default=5)
    ap.add_argument("--streams", type=int, default=0, help="real-time streams beside the file rounds")
    ap.add_argument("--silence-threshold", type=float, default=1.0)
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
        # streams=False: no stream lane here, so no lane model copy and no niced file calls (as in a job worker)
        engine = Engine.load(Settings(models_dir=models_dir, device="cpu", beam_size=args.beam_size), streams=False)
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

        beside = StreamsBeside(f"ws://127.0.0.1:{port}/ws/transcribe", args) if args.streams else None
        times: dict[str, dict[Path, list[float]]] = {name: {f: [] for f in files} for name, _ in paths}
        cpu: dict[str, dict[Path, list[float]]] = {name: {f: [] for f in files} for name, _ in paths}
        texts = {}
        phases: list[tuple[str, float, float]] = []  # what ran when (the streams' finals are split by it)
        for _ in range(args.rounds):
            for name, fn in paths:
                began = time.monotonic()
                for f in files:
                    t, c = time.perf_counter(), time.process_time()
                    texts[(name, f)] = fn(f)
                    times[name][f].append(time.perf_counter() - t)
                    cpu[name][f].append(time.process_time() - c)
                phases.append((name, began, time.monotonic()))

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
        # CPU time of the in-process paths (this process's threads only: the server's is not counted here),
        # less disturbed than wall time when the box is busy with other work.
        cpu_total = {name: sum(statistics.median(cpu[name][f]) for f in files) for name in ("engine", "batched")}
        print(f"CPU s, in-process, median per file summed: engine {cpu_total['engine']:.3f}, "
              f"fw batch {cpu_total['batched']:.3f}, engine/batch {cpu_total['engine'] / cpu_total['batched']:.3f}; "
              f"wall engine/batch {totals['engine'] / totals['batched']:.3f}")
        print("fw seq: WhisperModel.transcribe; fw batch: BatchedInferencePipeline(batch 8); engine: the server's "
              "Engine.transcribe in this process, without HTTP (srv/engine = HTTP + upload overhead)")
        if beside is not None:
            beside.stop(phases)
    finally:
        server.terminate()
        server.wait(30)
        log.close()


if __name__ == "__main__":
    main()
